//! Admin HTTP endpoint: health, readiness, Prometheus metrics and computed status.
