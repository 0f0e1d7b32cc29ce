"""personsearch: find a person in a large set of scene images (CLSA, ECCV 2018, and beyond)."""

__version__ = "0.1.0"
