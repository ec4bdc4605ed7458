//! The configuration file and its drop-in directory (`conf.d/*.toml` beside it), read and
//! merged into one TOML text.
//!
//! Fragments are merged in file-name order onto the main file: tables merge key by key, a
//! key set again replaces the earlier value, arrays of tables (`[[devices]]`,
//! `[[modbus.buses]]`, `[[core.applications]]`) are appended to. A site can so keep its own
//! settings out of the packaged conffile and an upgrade that changes a default never asks.
//! Without fragments the file's text is returned untouched (comments and all).

use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, Table};

use super::ConfigErrors;

/// `conf.d` beside the configuration file.
pub fn dropin_dir(file: &Path) -> PathBuf {
    file.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("conf.d")
}

/// The fragments that apply to `file`, in merge order: `*.toml` in its `conf.d`, hidden
/// files left out. A missing directory means none.
pub fn fragments(file: &Path) -> Result<Vec<PathBuf>, ConfigErrors> {
    let dir = dropin_dir(file);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(cannot_read(&dir, &e)),
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.') && name.ends_with(".toml") && p.is_file()
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Reads `file` and merges its fragments onto it.
pub fn read(file: &Path) -> Result<String, ConfigErrors> {
    let text = std::fs::read_to_string(file).map_err(|e| cannot_read(file, &e))?;
    let parts = fragments(file)?;
    if parts.is_empty() {
        return Ok(text);
    }
    let mut texts = Vec::with_capacity(parts.len());
    for p in &parts {
        texts.push((
            p.clone(),
            std::fs::read_to_string(p).map_err(|e| cannot_read(p, &e))?,
        ));
    }
    merge_texts(file, &text, &texts)
}

/// Merges fragment texts onto the main text (pure; see the module's rules).
pub fn merge_texts(
    file: &Path,
    main: &str,
    parts: &[(PathBuf, String)],
) -> Result<String, ConfigErrors> {
    // A main file that does not parse is returned as it is: the validator reports its
    // errors with their places, which are more useful than a merge failure.
    let Ok(mut doc) = main.parse::<DocumentMut>() else {
        return Ok(main.to_owned());
    };
    let mut errors = Vec::new();
    for (path, text) in parts {
        match text.parse::<DocumentMut>() {
            Ok(mut part) => {
                // Tables are written in the order of their positions: the fragment's come
                // after everything already there.
                let after = max_position(doc.as_table()) + 1;
                shift_positions(part.as_table_mut(), after);
                merge_table(doc.as_table_mut(), part.as_table())
            }
            Err(e) => errors.push(format!("{}: {}", path.display(), e.to_string().trim_end())),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let names: Vec<String> = parts.iter().map(|(p, _)| p.display().to_string()).collect();
    Ok(format!(
        "# {} merged with {}\n{}",
        file.display(),
        names.join(", "),
        doc
    ))
}

fn merge_table(dst: &mut Table, src: &Table) {
    for (key, item) in src.iter() {
        match (dst.get_mut(key), item) {
            (Some(Item::Table(d)), Item::Table(s)) => merge_table(d, s),
            (Some(Item::ArrayOfTables(d)), Item::ArrayOfTables(s)) => {
                for t in s.iter() {
                    d.push(t.clone());
                }
            }
            (Some(d), s) if d.is_table_like() && s.is_table_like() => {
                // An inline table on one side: merge through plain tables.
                let mut merged = d.as_table_like().map(to_table).unwrap_or_default();
                merge_table(
                    &mut merged,
                    &s.as_table_like().map(to_table).unwrap_or_default(),
                );
                *d = Item::Table(merged);
            }
            _ => {
                dst.insert(key, item.clone());
            }
        }
    }
}

fn max_position(t: &Table) -> isize {
    let mut m = t.position().unwrap_or(0);
    for (_, item) in t.iter() {
        match item {
            Item::Table(s) => m = m.max(max_position(s)),
            Item::ArrayOfTables(a) => {
                for s in a.iter() {
                    m = m.max(max_position(s));
                }
            }
            _ => {}
        }
    }
    m
}

fn shift_positions(t: &mut Table, by: isize) {
    if let Some(p) = t.position() {
        t.set_position(Some(p + by));
    }
    for (_, item) in t.iter_mut() {
        match item {
            Item::Table(s) => shift_positions(s, by),
            Item::ArrayOfTables(a) => {
                for s in a.iter_mut() {
                    shift_positions(s, by);
                }
            }
            _ => {}
        }
    }
}

fn to_table(t: &dyn toml_edit::TableLike) -> Table {
    let mut out = Table::new();
    for (k, v) in t.iter() {
        out.insert(k, v.clone());
    }
    out
}

fn cannot_read(path: &Path, e: &std::io::Error) -> ConfigErrors {
    let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
        " (the packaged files are readable by root and the kp-gateway group only: run this with sudo)"
    } else {
        ""
    };
    ConfigErrors(vec![format!("{}: cannot read: {e}{hint}", path.display())])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merged(main: &str, parts: &[&str]) -> toml::Table {
        let parts: Vec<(PathBuf, String)> = parts
            .iter()
            .enumerate()
            .map(|(i, t)| (PathBuf::from(format!("conf.d/{i}.toml")), t.to_string()))
            .collect();
        let text = merge_texts(Path::new("gateway.toml"), main, &parts).unwrap();
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn tables_merge_keys_replace_arrays_of_tables_append() {
        let main = "[gateway]\nstate_dir = \"/a\"\nlog_level = \"info\"\n\
                    [[devices]]\nname = \"one\"\n[web]\nlisten = \"0.0.0.0:8088\"\n";
        let t = merged(
            main,
            &[
                "[web]\nlisten = \"127.0.0.1:8088\"\n",
                "[[devices]]\nname = \"two\"\n[gateway]\nlog_level = \"debug\"\n",
            ],
        );
        assert_eq!(t["gateway"]["state_dir"].as_str(), Some("/a"));
        assert_eq!(t["gateway"]["log_level"].as_str(), Some("debug"));
        assert_eq!(t["web"]["listen"].as_str(), Some("127.0.0.1:8088"));
        let names: Vec<_> = t["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["one", "two"]);
    }

    #[test]
    fn a_fragment_adds_a_section_the_main_file_lacks_and_merges_inline_tables() {
        let t = merged(
            "[gateway]\nstate_dir = \"/a\"\nbuffer = { max_bytes = 1 }\n",
            &[
                "[upstream]\nhost = \"kaa\"\nport = 8883\n",
                "[gateway.buffer]\nmax_age = 5\n",
            ],
        );
        assert_eq!(t["upstream"]["host"].as_str(), Some("kaa"));
        assert_eq!(t["gateway"]["buffer"]["max_bytes"].as_integer(), Some(1));
        assert_eq!(t["gateway"]["buffer"]["max_age"].as_integer(), Some(5));
    }

    #[test]
    fn a_broken_fragment_is_named_and_nothing_is_merged() {
        let e = merge_texts(
            Path::new("gateway.toml"),
            "[web]\n",
            &[(PathBuf::from("conf.d/bad.toml"), "[web\n".into())],
        )
        .unwrap_err();
        assert!(e.0[0].starts_with("conf.d/bad.toml: "), "{e:?}");
    }

    #[test]
    fn files_are_taken_in_name_order_hidden_and_other_files_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, "[web]\nlisten = \"0.0.0.0:1\"\n").unwrap();
        let d = dropin_dir(&file);
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("20-b.toml"), "[web]\nlisten = \"0.0.0.0:3\"\n").unwrap();
        std::fs::write(d.join("10-a.toml"), "[web]\nlisten = \"0.0.0.0:2\"\n").unwrap();
        std::fs::write(d.join(".30-hidden.toml"), "[web]\nlisten = \"x\"\n").unwrap();
        std::fs::write(d.join("40.toml.dpkg-dist"), "[web]\nlisten = \"y\"\n").unwrap();
        let text = read(&file).unwrap();
        let t: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(t["web"]["listen"].as_str(), Some("0.0.0.0:3"));
        assert!(text.starts_with("# "), "the merge is said at the top");
        std::fs::remove_dir_all(&d).unwrap();
        assert_eq!(
            read(&file).unwrap(),
            "[web]\nlisten = \"0.0.0.0:1\"\n",
            "untouched"
        );
    }
}
