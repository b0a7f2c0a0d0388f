//! Placeholder: the relay lands with the stream-plane issue.
