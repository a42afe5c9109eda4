"""Editing real photos: face edit, swap, reenact, anonymize (images and folders), pseudonyms;
their settings as values (``options``) and the jobs the CLI and the web app share (``jobs``)."""
