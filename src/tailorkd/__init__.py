"""tailorkd: distil a large language model into a small tailored classifier, without labelled training data."""

__version__ = "0.1.0"
