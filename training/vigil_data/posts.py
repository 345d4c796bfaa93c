"""Synthetic social-platform posts, some of them spam, for the anti-spam classifier.

Each post is a few sentences built from templates: ordinary posts talk about everyday topics
(food, sport, work, travel, pets, weather, films); spam promises money, prizes, followers or
pills and pushes a link. Some ordinary posts borrow a spammy word ("free", "win", "link") and
some spam is written plainly, so the classes overlap; ``label_noise`` flips a share of labels
(people disagree about spam too). Deterministic for a given seed.
"""

from __future__ import annotations

import numpy as np

HAM_OPENINGS = [
    "just got back from", "really enjoyed", "can't believe", "thinking about", "finally finished",
    "anyone else tried", "spent the whole day on", "so happy with", "looking forward to", "tired after",
]
HAM_TOPICS = [
    "the farmers market", "my morning run", "the football match", "a long week at work", "our trip to the coast",
    "the new bakery downtown", "walking the dog", "this rainy weather", "the film last night", "my sister's wedding",
    "the book club", "a hike in the hills", "cooking pasta from scratch", "the school concert", "fixing my bike",
    "the garden this spring", "a quiet sunday", "the museum exhibition", "training for the marathon", "the team meeting",
]
HAM_ENDINGS = [
    "what a day", "highly recommend it", "see you all soon", "photos coming later", "any tips welcome",
    "feeling grateful", "cannot wait for next time", "love this community", "back to work tomorrow", "thanks everyone",
    "the kids loved it", "might do it again", "the weather was perfect", "long story short it was great",
]
SPAM_OPENINGS = [
    "congratulations you have been selected", "act now", "limited offer", "earn money from home",
    "you won a prize", "exclusive deal", "dont miss out", "urgent", "guaranteed income", "get rich fast",
]
SPAM_OFFERS = [
    "claim your free gift card", "buy cheap pills without prescription", "get 10000 followers instantly",
    "double your bitcoin in one day", "win a brand new iphone", "lose weight in one week", "work from home and earn cash",
    "unlock the casino bonus", "get a loan with no credit check", "exclusive crypto investment returns",
]
SPAM_CALLS = [
    "click the link in bio", "visit bit.ly slash winnow", "send a direct message now", "offer ends tonight",
    "reply with your email", "only 3 spots left", "sign up free today", "verify your account here",
]
#: Spammy words an ordinary post may borrow, and plain words spam may use.
HAM_BORROWS = ["free entry", "win or lose", "link in the comments", "cheap tickets", "prize draw at the fair"]
SPAM_PLAIN = ["hello friend", "nice post", "great photo", "check this out", "thanks for sharing"]


def _ham(rng: np.random.Generator) -> str:
    parts = [rng.choice(HAM_OPENINGS), rng.choice(HAM_TOPICS)]
    if rng.random() < 0.5:
        parts += ["and", rng.choice(HAM_TOPICS)]
    if rng.random() < 0.15:
        parts.append(rng.choice(HAM_BORROWS))
    parts.append(rng.choice(HAM_ENDINGS))
    return " ".join(parts)


def _spam(rng: np.random.Generator) -> str:
    parts = []
    if rng.random() < 0.3:
        parts.append(rng.choice(SPAM_PLAIN))
    if rng.random() < 0.8:
        parts.append(rng.choice(SPAM_OPENINGS))
    parts.append(rng.choice(SPAM_OFFERS))
    if rng.random() < 0.85:
        parts.append(rng.choice(SPAM_CALLS))
    if rng.random() < 0.2:
        parts.append(rng.choice(HAM_TOPICS))
    return " ".join(parts)


def generate(n: int, seed: int, spam_share: float = 0.3, label_noise: float = 0.03) -> tuple[list[str], np.ndarray]:
    """``n`` posts and their labels (1 = spam), ``spam_share`` of them spam before label noise."""
    rng = np.random.default_rng(seed)
    truth = (rng.random(n) < spam_share).astype(np.int64)
    posts = [_spam(rng) if t else _ham(rng) for t in truth]
    capitalise = rng.random(n) < 0.3
    posts = [p.capitalize() if c else p for p, c in zip(posts, capitalise)]
    flips = rng.random(n) < label_noise
    return posts, np.where(flips, 1 - truth, truth)
