//! The blueprint keys kiln refuses on purpose, each with what to do instead.
//! bootc-image-builder accepts most of these and silently ignores them (bib#1015,
//! image-builder#2499); kiln says so before anything is written.

/// (key path, message). A path matches the key itself and anything under it; `*` stands for
/// a list index.
pub const REFUSED: &[(&str, &str)] = &[
    ("packages", "packages cannot be added at bake time: install them in the image (a RUN line in its Containerfile)"),
    ("modules", "packages cannot be added at bake time: install them in the image (a RUN line in its Containerfile)"),
    ("enabled_modules", "module streams cannot be enabled at bake time: enable them in the image's Containerfile"),
    ("groups", "package groups cannot be installed at bake time: install them in the image's Containerfile (user groups are [[customizations.group]])"),
    ("containers", "embedding container images is not supported: make them logically bound images of the image (/usr/lib/bootc/bound-images.d)"),
    ("distro", "the distribution is the image's: remove this key"),
    ("architecture", "the architecture is the image's: pick it with --target-arch"),
    ("customizations.hostname", "a bootc disk cannot set it at bake time; set it in the image or with a files customization of /etc/hostname"),
    ("customizations.timezone", "the time zone is not set at bake time: link /etc/localtime in the image, or use a files customization (for NTP servers, /etc/chrony.conf or a timesyncd drop-in)"),
    ("customizations.locale", "the locale is not set at bake time: set it in the image, or use a files customization of /etc/locale.conf and /etc/vconsole.conf"),
    ("customizations.firewall", "the firewall is not configured at bake time: configure it in the image (firewalld zones under /etc/firewalld) or with files customizations"),
    ("customizations.services", "units are not enabled at bake time: enable them in the image (systemctl enable in its Containerfile, or a systemd preset)"),
    ("customizations.installation_device", "the installer's target is [customizations.installer] target-disk"),
    ("customizations.partitioning_mode", "kiln makes plain partitions; describe them with [[customizations.filesystem]] or [customizations.disk]"),
    ("customizations.fdo", "FIDO device onboarding is not supported"),
    ("customizations.openscap", "OpenSCAP remediation runs tools from the image, which kiln never does: apply the profile in the image's Containerfile"),
    ("customizations.ignition", "Ignition first-boot provisioning is not supported yet: give users, keys and files with the user, files and directories customizations"),
    ("customizations.repositories", "package repositories are the image's: add them in its Containerfile (or with a files customization under /etc/yum.repos.d)"),
    ("customizations.fips", "FIPS mode is the image's: enable it in the image (crypto policy) and add the fips=1 kernel argument with [customizations.kernel] append"),
    ("customizations.rpm", "RPM settings (GPG keys) are the image's: import them in its Containerfile"),
    ("customizations.rhsm", "subscription settings are not applied at bake time: configure them in the image"),
    ("customizations.cacerts", "CA certificates are the image's: add them in its Containerfile (or a files customization under /etc/pki/ca-trust/source/anchors, and update-ca-trust at boot)"),
    ("customizations.containers-storage", "container storage settings are the image's: configure /etc/containers/storage.conf in the image or with a files customization"),
    ("customizations.firstboot", "first-boot scripts are not supported: ship a systemd unit in the image"),
    ("customizations.dnf", "dnf settings are the image's: configure them in its Containerfile"),
    ("customizations.sshd", "sshd is configured in the image, or with a files customization of a drop-in under /etc/ssh/sshd_config.d/"),
    ("customizations.bootloader", "GRUB's console settings are not supported yet: set console kernel arguments with [customizations.kernel] append"),
    ("customizations.kernel.name", "the kernel is the image's (/usr/lib/modules/<kver>): remove this key"),
    ("customizations.files.*.uri", "a file's content comes from `data` (kiln reads nothing from the build host for a file customization)"),
    ("customizations.installer.sudo-nopasswd", "kiln's installer is not Anaconda: give a user sudo rights with a files customization under /etc/sudoers.d"),
    ("customizations.installer.kickstart", "kiln's installer is not Anaconda and reads no kickstart: use [customizations.installer] target-disk, wipe, filesystem, finish"),
    ("customizations.installer.modules", "kiln's installer is not Anaconda: it has no modules to enable or disable"),
    ("customizations.installer.bootloader", "kiln's installer boots without a menu timeout to set"),
    ("customizations.installer.payload", "kiln's installer installs the image itself; flatpaks belong in the image"),
];

/// The message for a refused key at `path` (dot-separated, list indexes as numbers).
pub fn message(path: &str) -> Option<&'static str> {
    let parts: Vec<&str> = path.split('.').collect();
    REFUSED.iter().find_map(|(pattern, msg)| {
        let pat: Vec<&str> = pattern.split('.').collect();
        let matches = pat.len() <= parts.len()
            && pat.iter().zip(&parts).all(|(p, k)| *p == *k || (*p == "*" && k.chars().all(|c| c.is_ascii_digit())));
        matches.then_some(*msg)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths_match_keys_and_list_items() {
        assert!(super::message("customizations.hostname").unwrap().contains("/etc/hostname"));
        assert!(super::message("customizations.files.3.uri").is_some());
        assert!(super::message("customizations.files.3.data").is_none());
        assert!(super::message("packages.0").is_some());
        assert!(super::message("customizations.user").is_none());
    }
}
