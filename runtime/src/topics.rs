//! `gridflow topics apply`: the topics of the catalog (`contracts/topics.toml`) created or
//! brought up to date through the Kafka admin API.
//!
//! What the catalog says of a topic is its partition count and its retention
//! (`retention.ms`); each topic's dead-letter topic gets the same. The plan compares that with
//! the broker (metadata for partitions, `DescribeConfigs` for the retention) and is applied
//! in one pass: missing topics are created, partitions added, the retention altered (the
//! topic's other settings are sent back unchanged: `AlterConfigs` replaces the whole set).
//! Applying the same catalog twice changes nothing the second time. Partitions are never
//! removed (Kafka cannot): a catalog asking for fewer is reported as a conflict, exit 1.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;

use crate::contracts::TopicCatalog;
use crate::kafka::KafkaSettings;

/// What one topic should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Its name.
    pub name: String,
    /// Its partition count.
    pub partitions: i32,
    /// Topic configs gridflow manages (`retention.ms`).
    pub configs: BTreeMap<String, String>,
}

/// Reads the catalog: every topic and its dead-letter topic, in catalog order.
pub fn desired(catalog: &TopicCatalog) -> Result<Vec<Desired>, String> {
    let mut out: Vec<Desired> = Vec::new();
    for t in &catalog.topics {
        let retention = crate::config::parse_age(&t.retention)
            .map_err(|e| format!("topic `{}`: retention {e}", t.name))?;
        let configs = BTreeMap::from([(
            "retention.ms".to_string(),
            retention.as_millis().to_string(),
        )]);
        if t.partitions < 1 {
            return Err(format!("topic `{}`: partitions must be at least 1", t.name));
        }
        for name in std::iter::once(&t.name).chain(t.dead_letter.as_ref()) {
            if out.iter().any(|d| d.name == *name) {
                return Err(format!("topic `{name}` is in the catalog twice"));
            }
            out.push(Desired {
                name: name.clone(),
                partitions: t.partitions,
                configs: configs.clone(),
            });
        }
    }
    Ok(out)
}

/// What the broker has of a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Current {
    /// Its partition count.
    pub partitions: i32,
    /// Its settings as the broker describes them, defaults included; `None` when the
    /// broker does not answer `DescribeConfigs`.
    pub configs: Option<BTreeMap<String, String>>,
    /// The settings set on the topic itself (what an alter must send back).
    pub overrides: BTreeMap<String, String>,
    /// Settings set on the topic whose value the broker does not show (secrets): an alter
    /// would delete them, so none is made.
    pub unreadable: Vec<String>,
}

/// What applying does to one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Created with its partitions and configs.
    Create(Desired),
    /// Brought up to date.
    Update {
        /// The topic.
        name: String,
        /// Partitions from, to.
        partitions: Option<(i32, i32)>,
        /// Configs changed: key, from (`None`: the default), to.
        configs: Vec<(String, Option<String>, String)>,
        /// Every non-default config after the change (what `AlterConfigs` sends).
        all_configs: BTreeMap<String, String>,
    },
    /// Nothing to do.
    Unchanged(String),
    /// The catalog asks for fewer partitions than the topic has.
    Conflict {
        /// The topic.
        name: String,
        /// Why.
        reason: String,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Create(d) => {
                write!(f, "create    {} (partitions {}", d.name, d.partitions)?;
                for (k, v) in &d.configs {
                    write!(f, ", {k}={v}")?;
                }
                write!(f, ")")
            }
            Change::Update {
                name,
                partitions,
                configs,
                ..
            } => {
                write!(f, "update    {name} (")?;
                let mut parts = Vec::new();
                if let Some((from, to)) = partitions {
                    parts.push(format!("partitions {from} -> {to}"));
                }
                for (k, from, to) in configs {
                    parts.push(format!(
                        "{k} {} -> {to}",
                        from.as_deref().unwrap_or("(default)")
                    ));
                }
                write!(f, "{})", parts.join(", "))
            }
            Change::Unchanged(name) => write!(f, "unchanged {name}"),
            Change::Conflict { name, reason } => write!(f, "conflict  {name} ({reason})"),
        }
    }
}

/// The changes that bring `current` (by topic name; absent: no such topic) to `desired`.
pub fn plan(desired: &[Desired], current: &BTreeMap<String, Current>) -> Vec<Change> {
    desired
        .iter()
        .map(|d| {
            let Some(c) = current.get(&d.name) else {
                return Change::Create(d.clone());
            };
            if d.partitions < c.partitions {
                return Change::Conflict {
                    name: d.name.clone(),
                    reason: format!(
                        "the catalog asks for {} partitions, the topic has {} (Kafka cannot remove partitions; create a new topic version instead)",
                        d.partitions, c.partitions
                    ),
                };
            }
            let partitions = (d.partitions > c.partitions).then_some((c.partitions, d.partitions));
            let mut all_configs = c.overrides.clone();
            let mut configs = Vec::new();
            if let Some(now) = &c.configs {
                for (k, v) in &d.configs {
                    if now.get(k) != Some(v) {
                        configs.push((k.clone(), now.get(k).cloned(), v.clone()));
                        all_configs.insert(k.clone(), v.clone());
                    }
                }
            }
            if !configs.is_empty() && !c.unreadable.is_empty() {
                return Change::Conflict {
                    name: d.name.clone(),
                    reason: format!(
                        "its settings {} are secret and an alter would delete them; change the retention with the broker's own tools",
                        c.unreadable.join(", ")
                    ),
                };
            }
            if partitions.is_none() && configs.is_empty() {
                Change::Unchanged(d.name.clone())
            } else {
                Change::Update {
                    name: d.name.clone(),
                    partitions,
                    configs,
                    all_configs,
                }
            }
        })
        .collect()
}

/// Options of `gridflow topics apply`.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Replication factor of created topics; `-1`: the broker's default.
    pub replication_factor: i32,
    /// Print the plan, change nothing.
    pub dry_run: bool,
}

/// How the catalog was applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Topics created (or that would be).
    pub created: usize,
    /// Topics updated (or that would be).
    pub updated: usize,
    /// Topics already as the catalog says.
    pub unchanged: usize,
    /// Topics the catalog cannot apply to.
    pub conflicts: usize,
    /// True when the broker did not describe the topics' configs (their retention was not
    /// compared).
    pub configs_unknown: bool,
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// What the broker has of the `names` topics. `Err`: a topic's metadata is in error, or the
/// broker refused to describe the topics' settings for another reason than not supporting it.
async fn current(
    settings: &KafkaSettings,
    admin: &AdminClient<DefaultClientContext>,
    names: &[String],
) -> Result<BTreeMap<String, Current>, String> {
    use rdkafka::admin::{ConfigSource, OwnedResourceSpecifier};
    let partitions = settings
        .topic_partitions(TIMEOUT)
        .await
        .map_err(|e| format!("cannot read the broker's metadata: {e}"))?;
    let mut present = Vec::new();
    for name in names {
        match partitions.get(name) {
            None | Some(Err(rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Some(Err(code)) => {
                return Err(format!("topic `{name}`: its metadata has an error: {code}"))
            }
            Some(Ok(n)) => present.push((name, *n)),
        }
    }
    type Described = (
        BTreeMap<String, String>,
        BTreeMap<String, String>,
        Vec<String>,
    );
    let mut described: BTreeMap<String, Described> = BTreeMap::new();
    if !present.is_empty() {
        let specifiers: Vec<ResourceSpecifier<'_>> = present
            .iter()
            .map(|(n, _)| ResourceSpecifier::Topic(n.as_str()))
            .collect();
        let results = match admin.describe_configs(&specifiers, &options()).await {
            Ok(results) => results,
            Err(rdkafka::error::KafkaError::AdminOp(
                rdkafka::types::RDKafkaErrorCode::UnsupportedFeature,
            )) => Vec::new(),
            Err(e) => return Err(format!("cannot describe the topics' settings: {e}")),
        };
        for result in results {
            let resource =
                result.map_err(|code| format!("cannot describe the topics' settings: {code}"))?;
            tracing::debug!(resource = ?resource, "Topic settings described.");
            let OwnedResourceSpecifier::Topic(name) = &resource.specifier else {
                continue;
            };
            let values = resource
                .entries
                .iter()
                .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
                .collect();
            // What is set on the topic itself: sent back with a change, since AlterConfigs
            // replaces the topic's whole set. Inherited broker settings are not (they would
            // become topic overrides); a broker without sources says only "not default".
            let mut overrides = BTreeMap::new();
            let mut secrets = Vec::new();
            for e in &resource.entries {
                let own = match e.source {
                    ConfigSource::DynamicTopic => true,
                    ConfigSource::Unknown => !e.is_default,
                    _ => false,
                };
                if !own || e.is_read_only {
                    continue;
                }
                match (&e.value, e.is_sensitive) {
                    (Some(v), false) => {
                        overrides.insert(e.name.clone(), v.clone());
                    }
                    // Not readable: an alter would delete it.
                    _ => secrets.push(e.name.clone()),
                }
            }
            described.insert(name.clone(), (values, overrides, secrets));
        }
    }
    Ok(present
        .into_iter()
        .map(|(name, partitions)| {
            let (configs, overrides, unreadable) = match described.remove(name) {
                Some((values, overrides, secrets)) => (Some(values), overrides, secrets),
                None => (None, BTreeMap::new(), Vec::new()),
            };
            (
                name.clone(),
                Current {
                    partitions,
                    configs,
                    overrides,
                    unreadable,
                },
            )
        })
        .collect())
}

/// An admin request's failure; a broker without the request says so plainly.
fn admin_error(request: &str, what: &str, e: &rdkafka::error::KafkaError) -> String {
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaErrorCode;
    match e {
        KafkaError::AdminOp(RDKafkaErrorCode::UnsupportedFeature) => format!(
            "the broker does not support {request}: gridflow cannot {what} there; do it with the broker's own tools ({e})"
        ),
        _ => format!("{request} failed: {e}"),
    }
}

fn options() -> AdminOptions {
    AdminOptions::new()
        .operation_timeout(Some(TIMEOUT))
        .request_timeout(Some(TIMEOUT))
}

/// Applies `catalog` to the broker of `settings`, writing one line per topic to `out`.
pub async fn apply(
    settings: &KafkaSettings,
    catalog: &TopicCatalog,
    options_: &ApplyOptions,
    out: &mut dyn std::io::Write,
) -> Result<Summary, String> {
    let desired = desired(catalog)?;
    let admin: AdminClient<DefaultClientContext> = settings
        .admin_config()
        .create()
        .map_err(|e| format!("cannot create the admin client: {e}"))?;
    let names: Vec<String> = desired.iter().map(|d| d.name.clone()).collect();
    let current = current(settings, &admin, &names).await?;
    let changes = plan(&desired, &current);
    let mut summary = Summary {
        configs_unknown: current.values().any(|c| c.configs.is_none()),
        ..Summary::default()
    };
    for change in &changes {
        let _ = writeln!(out, "{change}");
        match change {
            Change::Create(_) => summary.created += 1,
            Change::Update { .. } => summary.updated += 1,
            Change::Unchanged(_) => summary.unchanged += 1,
            Change::Conflict { .. } => summary.conflicts += 1,
        }
    }
    if options_.dry_run || summary.conflicts > 0 {
        return Ok(summary);
    }
    let creates: Vec<NewTopic<'_>> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Create(d) => Some(d.configs.iter().fold(
                NewTopic::new(
                    &d.name,
                    d.partitions,
                    TopicReplication::Fixed(options_.replication_factor),
                ),
                |t, (k, v)| t.set(k, v),
            )),
            _ => None,
        })
        .collect();
    if !creates.is_empty() {
        let results = admin
            .create_topics(&creates, &options())
            .await
            .map_err(|e| format!("CreateTopics failed: {e}"))?;
        for result in results {
            if let Err((topic, code)) = result {
                if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                    return Err(format!("creating topic `{topic}` failed: {code}"));
                }
            }
        }
    }
    let grow: Vec<NewPartitions<'_>> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Update {
                name,
                partitions: Some((_, to)),
                ..
            } => Some(NewPartitions::new(name, *to as usize)),
            _ => None,
        })
        .collect();
    if !grow.is_empty() {
        for result in admin
            .create_partitions(&grow, &options())
            .await
            .map_err(|e| admin_error("CreatePartitions", "add partitions", &e))?
        {
            result.map_err(|(topic, code)| {
                format!("adding partitions to `{topic}` failed: {code}")
            })?;
        }
    }
    let alters: Vec<AlterConfig<'_>> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Update {
                name,
                configs,
                all_configs,
                ..
            } if !configs.is_empty() => Some(all_configs.iter().fold(
                AlterConfig::new(ResourceSpecifier::Topic(name)),
                |a, (k, v)| a.set(k, v),
            )),
            _ => None,
        })
        .collect();
    if !alters.is_empty() {
        for result in admin
            .alter_configs(&alters, &options())
            .await
            .map_err(|e| admin_error("AlterConfigs", "change topic settings", &e))?
        {
            result.map_err(|(resource, code)| {
                format!("changing the settings of {resource:?} failed: {code}")
            })?;
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> TopicCatalog {
        toml::from_str(
            r#"
[[topic]]
name = "energy.load.actual.v1"
partitions = 6
retention = "30d"
owner = "market-data"
dead_letter = "energy.load.actual.v1.dlq"
[[topic]]
name = "energy.grid.frequency.v1"
partitions = 3
retention = "12h"
owner = "grid"
"#,
        )
        .unwrap()
    }

    #[test]
    fn the_catalog_gives_each_topic_and_its_dead_letter_topic() {
        let d = desired(&catalog()).unwrap();
        let names: Vec<&str> = d.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "energy.load.actual.v1",
                "energy.load.actual.v1.dlq",
                "energy.grid.frequency.v1"
            ]
        );
        assert_eq!(d[1].partitions, 6);
        assert_eq!(d[0].configs["retention.ms"], "2592000000");
        assert_eq!(d[2].configs["retention.ms"], "43200000");
    }

    #[test]
    fn plan_creates_grows_alters_and_refuses_fewer_partitions() {
        let d = desired(&catalog()).unwrap();
        let mut current = BTreeMap::new();
        // As the catalog says, with another setting of its own.
        current.insert(
            "energy.load.actual.v1".to_string(),
            Current {
                partitions: 6,
                configs: Some(BTreeMap::from([
                    ("retention.ms".to_string(), "2592000000".to_string()),
                    ("cleanup.policy".to_string(), "delete".to_string()),
                ])),
                overrides: BTreeMap::new(),
                unreadable: Vec::new(),
            },
        );
        // Fewer partitions and the default retention.
        current.insert(
            "energy.load.actual.v1.dlq".to_string(),
            Current {
                partitions: 2,
                configs: Some(BTreeMap::new()),
                overrides: BTreeMap::new(),
                unreadable: Vec::new(),
            },
        );
        let changes = plan(&d, &current);
        assert_eq!(
            changes[0],
            Change::Unchanged("energy.load.actual.v1".into())
        );
        let Change::Update {
            partitions,
            configs,
            ..
        } = &changes[1]
        else {
            panic!("{:?}", changes[1])
        };
        assert_eq!(*partitions, Some((2, 6)));
        assert_eq!(
            configs,
            &[("retention.ms".to_string(), None, "2592000000".to_string())]
        );
        assert!(matches!(&changes[2], Change::Create(t) if t.name == "energy.grid.frequency.v1"));
        assert_eq!(
            changes[1].to_string(),
            "update    energy.load.actual.v1.dlq (partitions 2 -> 6, retention.ms (default) -> 2592000000)"
        );

        current.insert(
            "energy.grid.frequency.v1".to_string(),
            Current {
                partitions: 8,
                configs: None,
                overrides: BTreeMap::new(),
                unreadable: Vec::new(),
            },
        );
        assert!(matches!(&plan(&d, &current)[2], Change::Conflict { .. }));
    }

    #[test]
    fn an_alter_keeps_the_topics_other_settings() {
        let d = desired(&catalog()).unwrap();
        let current = BTreeMap::from([(
            "energy.load.actual.v1".to_string(),
            Current {
                partitions: 6,
                configs: Some(BTreeMap::from([
                    ("retention.ms".to_string(), "1000".to_string()),
                    ("cleanup.policy".to_string(), "compact".to_string()),
                ])),
                overrides: BTreeMap::from([
                    ("retention.ms".to_string(), "1000".to_string()),
                    ("cleanup.policy".to_string(), "compact".to_string()),
                ]),
                unreadable: vec!["ssl.secret".to_string()],
            },
        )]);
        // A secret setting the broker does not show would be deleted: no alter.
        assert!(
            matches!(&plan(&d[..1], &current)[0], Change::Conflict { reason, .. } if reason.contains("ssl.secret"))
        );
        let mut current = current;
        current
            .get_mut("energy.load.actual.v1")
            .unwrap()
            .unreadable
            .clear();
        let Change::Update { all_configs, .. } = &plan(&d[..1], &current)[0] else {
            panic!()
        };
        assert_eq!(all_configs["cleanup.policy"], "compact");
        assert_eq!(all_configs["retention.ms"], "2592000000");
    }

    #[test]
    fn a_bad_retention_is_named() {
        let mut c = catalog();
        c.topics[0].retention = "30 days".into();
        let e = desired(&c).unwrap_err();
        assert!(e.contains("energy.load.actual.v1"), "{e}");
    }
}
