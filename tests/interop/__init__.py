"""Independent, spec-only implementation of the podlink protocol (interop check)."""
