//! `--node-set KEY=VALUE`: settings laid over the config of every node of a local cluster, named
//! the way the node's TOML file names them (`pipeline.proposals_inflight_max=1`,
//! `log.io_mode="fallback"`). They are checked by the node's own config parser, so a misspelt key
//! or a value out of range is refused with the parser's message before any node starts.

use std::path::Path;
use std::str::FromStr;

use smr_runtime::{NodeConfig, config_file};

/// One `KEY=VALUE`: a dotted path into the config file and a TOML value.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSetting {
    path: Vec<String>,
    value: toml::Value,
}

impl FromStr for NodeSetting {
    type Err = String;

    fn from_str(text: &str) -> Result<NodeSetting, String> {
        let (key, value) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?} is not KEY=VALUE (e.g. pipeline.proposals_inflight_max=1)"))?;
        let path: Vec<String> = key.trim().split('.').map(|part| part.trim().to_owned()).collect();
        if let Some(empty) = path.iter().position(String::is_empty) {
            return Err(format!("key {key:?} has an empty part at position {}", empty + 1));
        }
        let value_text = value.trim();
        // A TOML value as written in the file; a bare word that is not one (`fallback`) is taken
        // as a string, so that shells need no nested quotes.
        let value = match toml::from_str::<toml::Table>(&format!("v = {value_text}")) {
            Ok(mut table) => table.remove("v").expect("the table was parsed with key v"),
            Err(_) if !value_text.is_empty() => toml::Value::String(value_text.to_owned()),
            Err(_) => return Err(format!("key {key:?} has no value")),
        };
        Ok(NodeSetting { path, value })
    }
}

/// `config` with every setting laid over it, as the node would read it from its file.
///
/// # Errors
/// A message naming the setting and the parser's reason: a key that is not in the file's
/// schema, a value of the wrong type, or a config that fails validation.
pub fn apply(config: &NodeConfig, settings: &[NodeSetting]) -> Result<NodeConfig, String> {
    if settings.is_empty() {
        return Ok(config.clone());
    }
    let mut file: toml::Table = toml::from_str(&config_file::to_toml(config))
        .map_err(|e| format!("the generated config of node {} does not parse: {e}", config.node_id))?;
    for setting in settings {
        let key = setting.path.join(".");
        let (last, parents) = setting.path.split_last().expect("a setting's path has at least one part");
        let mut table = &mut file;
        for part in parents {
            let entry = table.entry(part.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            table = entry.as_table_mut().ok_or_else(|| format!("--node-set {key}: {part} is a value, not a table"))?;
        }
        table.insert(last.clone(), setting.value.clone());
    }
    let text = toml::to_string(&file).map_err(|e| format!("--node-set: cannot render the config: {e}"))?;
    config_file::parse(&text, Path::new("")).map_err(|e| format!("--node-set: {e}"))
}

impl std::fmt::Display for NodeSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.path.join("."), self.value)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::path::PathBuf;

    use smr_runtime::Member;

    use super::*;

    fn config() -> NodeConfig {
        let member = Member {
            id: 1,
            peer_address: SocketAddr::from(([127, 0, 0, 1], 7001)),
            client_address: SocketAddr::from(([127, 0, 0, 1], 7002)),
        };
        let mut config = NodeConfig::new(1, 9, PathBuf::from("/tmp/smr-node-settings"), vec![member]);
        config.secret = b"node-settings-test-secret".to_vec();
        config.sync_identity();
        config
    }

    fn set(text: &str) -> Result<NodeConfig, String> {
        let setting: NodeSetting = text.parse()?;
        apply(&config(), &[setting])
    }

    #[test]
    fn a_setting_changes_only_its_field() {
        let changed = set("pipeline.proposals_inflight_max=7").unwrap();
        assert_eq!(changed.pipeline.proposals_inflight_max, 7);
        let mut expected = config();
        expected.pipeline.proposals_inflight_max = 7;
        assert_eq!(config_file::to_toml(&changed), config_file::to_toml(&expected));
    }

    #[test]
    fn bare_words_are_strings_and_booleans_are_booleans() {
        assert!(set("pipeline.busy_poll=true").unwrap().pipeline.busy_poll);
        let setting: NodeSetting = "log.io_mode=fallback".parse().unwrap();
        assert_eq!(setting.value, toml::Value::String("fallback".into()));
        assert_eq!(setting.to_string(), "log.io_mode=\"fallback\"");
    }

    #[test]
    fn bad_settings_are_refused_with_the_key_named() {
        let unknown = set("pipeline.no_such_knob=1").unwrap_err();
        assert!(unknown.contains("no_such_knob"), "{unknown}");
        let wrong_type = set("pipeline.proposals_inflight_max=\"many\"").unwrap_err();
        assert!(wrong_type.contains("proposals_inflight_max"), "{wrong_type}");
        assert!("pipeline.tick_ms".parse::<NodeSetting>().unwrap_err().contains("KEY=VALUE"));
        assert!("pipeline..tick_ms=1".parse::<NodeSetting>().unwrap_err().contains("empty part"));
        assert!("pipeline.tick_ms=".parse::<NodeSetting>().unwrap_err().contains("no value"));
        let into_value = set("pipeline.tick_ms.x=1").unwrap_err();
        assert!(into_value.contains("not a table"), "{into_value}");
    }
}
