"""rolling-sandbox: rehearse rolling deployments on a local Docker fleet."""

__version__ = "0.1.0"
