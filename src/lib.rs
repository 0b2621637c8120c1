//! smlogfs core library.
#![deny(unsafe_code)]
