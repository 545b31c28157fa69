//! CDI names: a device is asked for by its fully qualified name,
//! `<vendor>/<class>=<device>` (e.g. `vendor.example/fake=dev0`), whose
//! `<vendor>/<class>` part is the `kind` of the spec file that defines it.
//! The characters each part may hold are the CDI specification's.

/// A fully qualified device name split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualifiedName<'a> {
    /// `vendor.example`.
    pub vendor: &'a str,
    /// `fake`.
    pub class: &'a str,
    /// `dev0`.
    pub device: &'a str,
}

/// Splits and checks `name` (`vendor/class=device`); the error says which
/// part is wrong and what it may hold.
pub fn parse_qualified(name: &str) -> Result<QualifiedName<'_>, String> {
    let (kind, device) = name.split_once('=').ok_or_else(|| {
        format!("{name:?} is not a qualified CDI device name (vendor/class=device)")
    })?;
    let (vendor, class) = parse_kind(kind)
        .map_err(|e| format!("{name:?} is not a qualified CDI device name: {e}"))?;
    check_device_name(device)
        .map_err(|e| format!("{name:?} is not a qualified CDI device name: {e}"))?;
    Ok(QualifiedName {
        vendor,
        class,
        device,
    })
}

/// Splits and checks a spec's `kind` (`vendor/class`).
pub fn parse_kind(kind: &str) -> Result<(&str, &str), String> {
    let (vendor, class) = kind
        .split_once('/')
        .ok_or_else(|| format!("kind {kind:?} is not vendor/class"))?;
    check_part("vendor", vendor, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
    })?;
    check_part("class", class, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '-' | '_')
    })?;
    if !vendor.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(format!("vendor {vendor:?} must start with a letter"));
    }
    if !class.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(format!("class {class:?} must start with a letter"));
    }
    Ok((vendor, class))
}

/// Checks a device's own name (the part after `=`).
pub fn check_device_name(device: &str) -> Result<(), String> {
    check_part("device name", device, |c| {
        c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
    })?;
    if !device.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "device name {device:?} must start with a letter or digit"
        ));
    }
    Ok(())
}

/// A part is non-empty, ends with a letter or digit and holds only the
/// characters `allowed` takes.
fn check_part(what: &str, part: &str, allowed: impl Fn(char) -> bool) -> Result<(), String> {
    if part.is_empty() {
        return Err(format!("empty {what}"));
    }
    if let Some(c) = part.chars().find(|&c| !allowed(c)) {
        return Err(format!("{what} {part:?} holds {c:?}"));
    }
    if !part.ends_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!("{what} {part:?} must end with a letter or digit"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_names_split_into_their_parts() {
        assert_eq!(
            parse_qualified("nvidia.com/gpu=0").unwrap(),
            QualifiedName {
                vendor: "nvidia.com",
                class: "gpu",
                device: "0"
            }
        );
        let q = parse_qualified("vendor.example/fake-class=dev_0.a:b").unwrap();
        assert_eq!((q.class, q.device), ("fake-class", "dev_0.a:b"));
    }

    #[test]
    fn bad_names_say_which_part_is_wrong() {
        for (name, says) in [
            ("dev0", "vendor/class=device"),
            ("vendor.example=dev0", "not vendor/class"),
            ("/fake=dev0", "empty vendor"),
            ("vendor.example/=dev0", "empty class"),
            ("vendor.example/fake=", "empty device name"),
            ("1vendor/fake=dev0", "must start with a letter"),
            ("vendor.example/fa.ke=dev0", "holds '.'"),
            (
                "vendor.example/fake=dev0-",
                "must end with a letter or digit",
            ),
            (
                "vendor.example/fake=-dev0",
                "must start with a letter or digit",
            ),
            ("vendor.example/fake=dev 0", "holds ' '"),
        ] {
            let e = parse_qualified(name).unwrap_err();
            assert!(e.contains(says), "{name}: {e}");
        }
    }
}
