//! Device profiles: register maps of common devices as data files (the shipped ones are
//! compiled in; a site adds its own `*.toml` in `gateway.profiles_dir`). Choosing a profile
//! when adding a device copies its points and line settings into the device's form, so
//! the configuration stays explicit and an upgrade never changes a running device's map.

use std::path::Path;

use serde::Deserialize;

/// A profile file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Short name used in links and on the command line (`eastron-sdm120`).
    pub id: String,
    pub vendor: String,
    pub model: String,
    /// The vendor document the map comes from.
    pub source: String,
    #[serde(default)]
    pub defaults: Defaults,
    /// `[[devices.points]]` tables, key for key.
    pub points: Vec<toml::Table>,
}

/// The device's factory settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub baud: Option<u32>,
    pub parity: Option<String>,
    pub unit_id: Option<u8>,
    pub poll_interval_ms: Option<u64>,
}

/// The profiles shipped with the product (`config/profiles/`).
const SHIPPED: &[(&str, &str)] = &[
    (
        "deye-hybrid.toml",
        include_str!("../../config/profiles/deye-hybrid.toml"),
    ),
    (
        "eastron-sdm120.toml",
        include_str!("../../config/profiles/eastron-sdm120.toml"),
    ),
    (
        "eastron-sdm630.toml",
        include_str!("../../config/profiles/eastron-sdm630.toml"),
    ),
    (
        "growatt-pv.toml",
        include_str!("../../config/profiles/growatt-pv.toml"),
    ),
    (
        "xy-md02.toml",
        include_str!("../../config/profiles/xy-md02.toml"),
    ),
];

/// Parses one profile file.
pub fn parse(text: &str) -> Result<Profile, String> {
    let p: Profile = toml::from_str(text).map_err(|e| e.message().to_owned())?;
    if p.points.is_empty() {
        return Err("a profile needs at least one [[points]]".into());
    }
    Ok(p)
}

/// Every profile: the shipped ones, then the site's (`dir/*.toml`, name order; one with the
/// id of a shipped profile replaces it). Files that do not parse are returned as errors
/// naming the file, and left out.
pub fn all(dir: Option<&Path>) -> (Vec<Profile>, Vec<String>) {
    let mut out: Vec<Profile> = SHIPPED
        .iter()
        .filter_map(|(_, text)| parse(text).ok())
        .collect();
    let mut errors = Vec::new();
    let Some(dir) = dir else {
        return (out, errors);
    };
    let mut files: Vec<_> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect(),
        Err(_) => Vec::new(), // no site profiles
    };
    files.sort();
    for f in files {
        match std::fs::read_to_string(&f)
            .map_err(|e| e.to_string())
            .and_then(|t| parse(&t))
        {
            Ok(p) => {
                out.retain(|q| q.id != p.id);
                out.push(p);
            }
            Err(e) => errors.push(format!("{}: {e}", f.display())),
        }
    }
    (out, errors)
}

/// The profile with `id`.
pub fn find(dir: Option<&Path>, id: &str) -> Option<Profile> {
    all(dir).0.into_iter().find(|p| p.id == id)
}

/// The profile's points as `[[devices.points]]` TOML, for pasting into a configuration.
pub fn points_toml(p: &Profile) -> String {
    let mut out = format!("# {} {} — from {}\n", p.vendor, p.model, p.source);
    for point in &p.points {
        out.push_str("\n[[devices.points]]\n");
        out.push_str(&toml::to_string(point).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn every_shipped_profile_parses_and_its_points_validate() {
        assert_eq!(all(None).0.len(), SHIPPED.len());
        for (file, text) in SHIPPED {
            let p = parse(text).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(format!("{}.toml", p.id), *file);
            assert!(p.source.len() > 20, "{file}: cite the vendor document");
            let config = format!(
                "[upstream]\nhost = \"kaa.example\"\n[[modbus.buses]]\nname = \"b\"\nkind = \"tcp\"\n\
                 address = \"127.0.0.1:502\"\n[[devices]]\nname = \"d\"\ntoken = \"t\"\n\
                 app_version = \"v1\"\n[devices.modbus]\nbus = \"b\"\n{}",
                points_toml(&p)
            );
            if let Err(e) = Config::from_toml(&config) {
                panic!("{file}: {e}");
            }
        }
    }

    #[test]
    fn a_site_profile_replaces_a_shipped_one_and_a_broken_one_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.toml"),
            "id = \"xy-md02\"\nvendor = \"Us\"\nmodel = \"M\"\nsource = \"our own map\"\n\
             [[points]]\nname = \"t\"\naddress = 0\ntype = \"u16\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("b.toml"), "id = ").unwrap();
        let (profiles, errors) = all(Some(dir.path()));
        assert_eq!(profiles.len(), SHIPPED.len());
        assert_eq!(find(Some(dir.path()), "xy-md02").unwrap().vendor, "Us");
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("b.toml"), "{errors:?}");
    }
}
