"""reconciler: schedule-as-code for ROMA Connect FDI task dispatches."""

__version__ = "0.1.0"
