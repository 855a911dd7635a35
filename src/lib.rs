//! kiln: bakes bootable container images into disk images and installs them.
//!
//! The pipeline flows one way, one module per stage (see ARCHITECTURE.md):
//! `image` → `tree` → `ostree` → `disk` → `bootloader` → `output` → `cloud`.

pub mod bake;
pub mod bootloader;
pub mod composefs;
pub mod cli;
pub mod cloud;
pub mod config;
pub mod customize;
pub mod disk;
pub mod efi;
pub mod fsmeta;
pub mod fsverity;
pub mod interrupt;
pub mod image;
pub mod inspect;
pub mod install;
pub mod memory;
pub mod ostree;
pub mod output;
pub mod pending;
pub mod platform;
pub mod progress;
pub mod selinux;
pub mod tree;
pub mod workspace;
