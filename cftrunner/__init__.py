"""cftrunner: continuous fine-tuning cycles on Prem Studio as a resumable state machine."""

__version__ = "0.1.0"
