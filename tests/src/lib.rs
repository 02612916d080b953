//! End-to-end test support: an OTLP receiver, fixture services and agent control.
