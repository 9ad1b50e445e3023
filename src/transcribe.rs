//! Audio file in, text out.
