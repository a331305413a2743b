//! Placeholder: filled in by the translation work.
