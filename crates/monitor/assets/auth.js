'use strict';

// A token, for monitors that check them: given once in the address (#token=...), kept for this
// tab only, asked for when the monitor answers 401.
function token() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem('vigil-token', decodeURIComponent(m[1]));
    history.replaceState(null, '', location.pathname + location.search);
  }
  return sessionStorage.getItem('vigil-token');
}

async function authFetch(url, options = {}) {
  const headers = new Headers(options.headers || {});
  const known = token();
  if (known) headers.set('Authorization', `Bearer ${known}`);
  const response = await fetch(url, { ...options, headers });
  if (response.status !== 401) return response;
  const given = (window.prompt('This monitor needs a token (from vigil token new):') || '').trim();
  if (!given) return response;
  sessionStorage.setItem('vigil-token', given);
  headers.set('Authorization', `Bearer ${given}`);
  return fetch(url, { ...options, headers });
}
