//! Constructors mirroring e3nn's derived tensor products (§6).
