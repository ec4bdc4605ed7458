//! Where in the configuration text a parse error is: turns a byte offset into the key
//! path it belongs to (`devices[1].modbus.unit_id`), so an error of the TOML reader is
//! reported like a validation error and the web page can show it next to its field.

use toml_edit::{Item, Table};

/// Key paths with the byte ranges of their values, and tables with their start.
#[derive(Debug, Default)]
struct Places {
    leaves: Vec<(String, std::ops::Range<usize>)>,
    tables: Vec<(String, usize)>,
}

fn walk(path: &str, t: &Table, out: &mut Places) {
    if let Some(span) = t.span() {
        out.tables.push((path.to_owned(), span.start));
    }
    for (k, item) in t.iter() {
        let p = if path.is_empty() {
            k.to_owned()
        } else {
            format!("{path}.{k}")
        };
        match item {
            Item::Table(sub) => walk(&p, sub, out),
            Item::ArrayOfTables(arr) => {
                for (i, sub) in arr.iter().enumerate() {
                    walk(&format!("{p}[{i}]"), sub, out);
                }
            }
            Item::Value(v) => {
                // From the key to the end of the value: an unknown key is found too.
                let key_start = t.key(k).and_then(|key| key.span()).map(|s| s.start);
                if let Some(span) = v.span() {
                    out.leaves
                        .push((p, key_start.unwrap_or(span.start)..span.end));
                }
            }
            Item::None => {}
        }
    }
}

/// The key path at byte `offset` of `text`: the value there, else the table it is in.
pub fn path_at(text: &str, offset: usize) -> Option<String> {
    let doc = toml_edit::Document::parse(text).ok()?;
    let mut places = Places::default();
    walk("", doc.as_table(), &mut places);
    if let Some((p, _)) = places
        .leaves
        .iter()
        .filter(|(_, r)| r.contains(&offset))
        .min_by_key(|(_, r)| r.len())
    {
        return Some(p.clone());
    }
    places
        .tables
        .iter()
        .filter(|(p, start)| *start <= offset && !p.is_empty())
        .max_by_key(|(_, start)| *start)
        .map(|(p, _)| p.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[upstream]\nhost = \"h\"\n\n[[devices]]\nname = \"a\"\n\n[[devices]]\nname = \"b\"\n[devices.modbus]\nbus = \"x\"\nunit_id = 300\n";

    #[test]
    fn a_value_is_found_by_its_offset_and_a_table_by_what_follows_its_header() {
        let at = TEXT.find("300").unwrap() + 1;
        assert_eq!(
            path_at(TEXT, at).as_deref(),
            Some("devices[1].modbus.unit_id")
        );
        let in_table = TEXT.find("[devices.modbus]").unwrap() + 3;
        assert_eq!(
            path_at(TEXT, in_table).as_deref(),
            Some("devices[1].modbus")
        );
        assert_eq!(path_at(TEXT, 2).as_deref(), Some("upstream"));
    }
}
