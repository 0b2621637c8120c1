//! Wire format shared by the smlogfs daemon and the mirror agent.
#![deny(unsafe_code)]
