"""Editing real photos: face edit, swap, reenact, anonymize (images and folders), pseudonyms."""
