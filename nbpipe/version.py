"""nbpipe's version: a module of its own, so any stage can import it without the package's API."""

__version__ = "0.1.0"
