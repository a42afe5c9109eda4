"""Fixtures of the generative training tests (defined in ``test_train_generative``) that the
other generative loops' tests use too: six photos of six people, and where face caches live."""

from test_train_generative import caches, photos  # noqa: F401 - fixtures
