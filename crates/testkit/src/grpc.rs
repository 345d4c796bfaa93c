//! Calls any gRPC method with an empty message (valid for every protobuf request type), to
//! check what a server answers before the method's own logic: authorisation, admission.

use std::time::Duration;

use tonic::client::Grpc;
use tonic::codegen::http::uri::PathAndQuery;

/// Calls `path` with one empty message (streaming methods get a stream of one) on `channel`;
/// Ok when the call got through to the method (whatever it then answered in the stream),
/// else the status. Gives up after 10 s.
pub async fn call_empty<T>(channel: T, path: &str, streaming: bool) -> Result<(), tonic::Status>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
{
    let mut grpc = Grpc::new(channel);
    let path = PathAndQuery::try_from(path.to_string()).expect("a method path");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let call = async move {
        grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.into().to_string()))?;
        if streaming {
            let request = tonic::Request::new(futures::stream::iter([()]));
            grpc.streaming(request, path, codec).await.map(|_| ())
        } else {
            grpc.unary(tonic::Request::new(()), path, codec).await.map(|_| ())
        }
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer within 10 s")))
}

/// Calls each of `methods` (path, streaming) on the TLS server at `url` (trusting `ca`) with
/// no token, with a token holding every scope but the one the method needs, and with a token
/// holding only that one, asserting UNAUTHENTICATED, PERMISSION_DENIED and served (open
/// methods served without a token). Returns the refusals it caused: (missing, scope).
pub async fn assert_scopes(
    url: &str,
    ca: &std::path::Path,
    tokens: &crate::tls::ScopedTokens,
    methods: &[(String, bool)],
) -> (u64, u64) {
    use tonic::Code;
    use vigil_security::auth::{Access, grpc_access};
    let client = |token: Option<&str>| vigil_security::ClientSecurity {
        ca_cert: Some(ca.to_path_buf()),
        token: token.map(str::to_string),
        ..Default::default()
    };
    let refused = |r: &Result<(), tonic::Status>, code| matches!(r, Err(s) if s.code() == code);
    let anonymous = client(None).connect(url).await.expect("connect over TLS");
    let (mut missing, mut denied) = (0, 0);
    for (path, streaming) in methods {
        let access = grpc_access(path);
        let result = call_empty(anonymous.clone(), path, *streaming).await;
        if access == Access::Open {
            assert!(!refused(&result, Code::Unauthenticated), "{path}: open, got {result:?}");
            continue;
        }
        assert!(refused(&result, Code::Unauthenticated), "{path}: no token, got {result:?}");
        missing += 1;
        let Access::Scope(scope) = access else {
            let any = client(Some(tokens.only(vigil_security::Scope::Control))).connect(url).await.expect("connect");
            let result = call_empty(any, path, *streaming).await;
            assert!(!refused(&result, Code::Unauthenticated), "{path}: any token, got {result:?}");
            continue;
        };
        let wrong = client(Some(tokens.all_but(scope))).connect(url).await.expect("connect");
        let result = call_empty(wrong, path, *streaming).await;
        assert!(refused(&result, Code::PermissionDenied), "{path}: every scope but {scope:?}, got {result:?}");
        denied += 1;
        let right = client(Some(tokens.only(scope))).connect(url).await.expect("connect");
        let result = call_empty(right, path, *streaming).await;
        assert!(
            !refused(&result, Code::Unauthenticated) && !refused(&result, Code::PermissionDenied),
            "{path}: {scope:?} alone, got {result:?}"
        );
    }
    (missing, denied)
}

/// Health and both reflection versions, as every Vigil gRPC port serves them: (path, streaming).
pub fn host_methods() -> Vec<(String, bool)> {
    [
        ("/grpc.health.v1.Health/Check", false),
        ("/grpc.health.v1.Health/Watch", true),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", true),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", true),
    ]
    .into_iter()
    .map(|(p, s)| (p.to_string(), s))
    .collect()
}
