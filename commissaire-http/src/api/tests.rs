//! Handler behaviour over the in-process bus and a real embedded store.
