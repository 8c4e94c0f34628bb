"""cdrd: a CDR server for VoIP gateways."""

__version__ = "0.1.0"
