//! `branch`: ordered conditions, each with its own steps and sink, and a default
//! (webMethods' BRANCH). Each message goes down the first route whose `when` holds (or every
//! one, `mode = "all"`), else the default, else on unchanged.

use serde::Deserialize;
use toml::de::DeValue;
use toml::Spanned;

use super::{
    guarded, nested_steps, run_all, scope, split_table, BuildContext,
    Outcome, Run, RunContext, Step, StepConfig, StepKind,
};
use crate::config::document::Document;
use crate::error::{BuildError, Failure};
use crate::jmes::{needs, with_scope, Doc, Expr, Need};
use crate::message::Item;
use crate::sinks::{parse_sink, SinkConfig};

/// `mode` of a branch.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum BranchMode {
    /// The first route whose `when` holds (default).
    #[default]
    First,
    /// Every route whose `when` holds (fan-out).
    All,
}

/// One route of a branch.
#[derive(Debug, Clone, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// A name for logs and errors (default `routes[<i>]`).
    pub name: Option<String>,
    /// JMESPath condition on the message (`meta()` included), JMESPath truthiness.
    pub when: String,
    /// Steps of this route (`[[steps.routes.steps]]`).
    #[serde(default)]
    pub steps: Vec<StepConfig>,
    /// Where the route's messages go (`[steps.routes.sink]`); without it they continue
    /// after the branch to the next step and the pipeline's sink.
    pub sink: Option<SinkConfig>,
}

/// The route of messages no `when` matched.
#[derive(Debug, Clone, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DefaultRouteConfig {
    /// Steps (`[[steps.default.steps]]`).
    #[serde(default)]
    pub steps: Vec<StepConfig>,
    /// Where they go (`[steps.default.sink]`); without it they continue after the branch.
    pub sink: Option<SinkConfig>,
}

/// `kind = "branch"`.
#[derive(Debug, Clone, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BranchConfig {
    /// `first` (default) or `all`.
    #[serde(default)]
    pub mode: BranchMode,
    /// The routes, in order (`[[steps.routes]]`).
    pub routes: Vec<RouteConfig>,
    /// Messages no route took (`[steps.default]`); without it they continue unchanged.
    pub default: Option<DefaultRouteConfig>,
}

impl StepKind for BranchConfig {
    const KIND: &'static str = "branch";
    const EXAMPLE: &'static str = r#"[[steps]]
kind = "branch"
[[steps.routes]]
name = "estimated"
when = "unit != 'kWh'"
[steps.routes.sink]
kind = "kafka"
topic = "energy.meter.reading.review.v1"
[steps.default]
[[steps.default.steps]]
kind = "set"
[steps.default.steps.fields]
checked = "`true`""#;

    fn parse<'i>(doc: &mut Document<'i>, value: &Spanned<DeValue<'i>>, context: &str) -> Option<Self> {
        let (shell, mut removed) = split_table(value, &["routes", "default"]);
        let default_v = removed.pop().flatten();
        let routes_v = removed.pop().flatten();
        /// The block's own keys.
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Shell {
            #[serde(default)]
            mode: BranchMode,
        }
        let shell: Option<Shell> = doc.section(&shell, context, &[]);
        let mut ok = true;
        let mut routes = Vec::new();
        match routes_v.as_ref().and_then(|v| v.get_ref().as_array()) {
            Some(items) if !items.is_empty() => {
                for (i, route_v) in items.iter().enumerate() {
                    match parse_route(doc, route_v, &format!("{context}.routes[{i}]")) {
                        Some(route) => routes.push(route),
                        None => ok = false,
                    }
                }
            }
            _ => {
                doc.error(
                    Some(routes_v.as_ref().map_or(value.span(), |v| v.span())),
                    format!("{context}: a branch needs at least one route"),
                    Some("add `[[steps.routes]]` tables, each with `when`".into()),
                );
                ok = false;
            }
        }
        let default = match default_v {
            None => None,
            Some(v) => {
                let default = parse_default(doc, &v, &format!("{context}.default"));
                ok &= default.is_some();
                default
            }
        };
        let mode = shell?.mode;
        ok.then_some(BranchConfig {
            mode,
            routes,
            default,
        })
    }

    fn build(&self, cx: &mut BuildContext<'_>) -> Result<Box<dyn Step>, BuildError> {
        let mut routes = Vec::new();
        for (i, r) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            let when = Expr::compile(&r.when)
                .map_err(|e| cx.error_at(&format!("{at}.when"), e.at("when")))?;
            let steps = cx.steps(&format!("{at}.steps"), &r.steps)?;
            let sink = match &r.sink {
                Some(s) => Some(cx.sink(&format!("{at}.sink"), s)?),
                None => None,
            };
            routes.push(Route {
                when: Some(when),
                steps,
                sink,
            });
        }
        let default = match &self.default {
            Some(d) => Some(Route {
                when: None,
                steps: cx.steps("default.steps", &d.steps)?,
                sink: match &d.sink {
                    Some(s) => Some(cx.sink("default.sink", s)?),
                    None => None,
                },
            }),
            None => None,
        };
        Ok(Box::new(Branch {
            id: cx.id().to_string(),
            all: self.mode == BranchMode::All,
            need: needs(routes.iter().filter_map(|r| r.when.as_ref())),
            routes,
            default,
        }))
    }

    fn nested(&self) -> Vec<&StepConfig> {
        self.routes
            .iter()
            .flat_map(|r| &r.steps)
            .chain(self.default.iter().flat_map(|d| &d.steps))
            .collect()
    }

    fn own_sinks(&self) -> Vec<&SinkConfig> {
        self.routes
            .iter()
            .filter_map(|r| r.sink.as_ref())
            .chain(self.default.iter().filter_map(|d| d.sink.as_ref()))
            .collect()
    }
}

/// One `[[steps.routes]]` table.
fn parse_route<'i>(
    doc: &mut Document<'i>,
    value: &Spanned<DeValue<'i>>,
    at: &str,
) -> Option<RouteConfig> {
    /// The route's own keys.
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Shell {
        name: Option<String>,
        when: String,
    }
    let (shell, mut parts) = split_table(value, &["steps", "sink"]);
    let sink_v = parts.pop().flatten();
    let steps_v = parts.pop().flatten();
    let shell: Option<Shell> = doc.section(&shell, at, &[]);
    if let Some(shell) = &shell {
        if let Err(e) = Expr::compile(&shell.when) {
            doc.report(value, at, e.at("when"));
        }
    }
    let steps = nested_steps(doc, steps_v, &format!("{at}.steps"));
    let sink = sink_v
        .as_ref()
        .map(|v| parse_sink(doc, v, &format!("{at}.sink")));
    match (shell, steps, sink) {
        (Some(shell), Some(steps), None) => Some(RouteConfig {
            name: shell.name,
            when: shell.when,
            steps,
            sink: None,
        }),
        (Some(shell), Some(steps), Some(Some(sink))) => Some(RouteConfig {
            name: shell.name,
            when: shell.when,
            steps,
            sink: Some(sink),
        }),
        _ => None,
    }
}

/// The `[steps.default]` table.
fn parse_default<'i>(
    doc: &mut Document<'i>,
    value: &Spanned<DeValue<'i>>,
    at: &str,
) -> Option<DefaultRouteConfig> {
    let (shell, mut parts) = split_table(value, &["steps", "sink"]);
    let sink_v = parts.pop().flatten();
    let steps_v = parts.pop().flatten();
    if let Some(t) = shell.get_ref().as_table() {
        doc.check_keys(t, &["steps", "sink"], at);
    }
    let steps = nested_steps(doc, steps_v, &format!("{at}.steps"));
    let sink = match sink_v
        .as_ref()
        .map(|v| parse_sink(doc, v, &format!("{at}.sink")))
    {
        None => Some(None),
        Some(Some(sink)) => Some(Some(sink)),
        Some(None) => None,
    };
    Some(DefaultRouteConfig {
        steps: steps?,
        sink: sink?,
    })
}

/// A built route.
struct Route {
    /// `None`: the default route.
    when: Option<Expr>,
    steps: Vec<Box<dyn Step>>,
    /// Index into the program's sinks; `None`: the messages continue after the branch.
    sink: Option<usize>,
}

/// The running `branch` block.
struct Branch {
    id: String,
    all: bool,
    routes: Vec<Route>,
    default: Option<Route>,
    /// What the routes' conditions read.
    need: Need,
}

impl Step for Branch {
    fn run<'a>(&'a self, items: Vec<Item>, cx: RunContext<'a>, out: &'a mut Outcome) -> Run<'a> {
        Run::Pending(Box::pin(async move {
            let runs = items.into_iter().map(|item| self.item(item, cx));
            Ok(out.merge(futures::future::try_join_all(runs).await?))
        }))
    }
}

impl Branch {
    /// One message through the branch: its deliveries and the messages that continue.
    async fn item(&self, item: Item, cx: RunContext<'_>) -> Result<(Outcome, Vec<Item>), Failure> {
        // The conditions read what they name, converted once; the routes get the message as
        // it came (raw bytes stay bytes).
        let doc = guarded(&self.id, || Doc::new(&item.payload, &self.need))?;
        let scope = scope(cx.meta, &item);
        let mut chosen = Vec::new();
        for route in &self.routes {
            let when = route.when.as_ref().expect("routes have conditions");
            if guarded(&self.id, || with_scope(&scope, || when.is_truthy_doc(&doc)))? {
                chosen.push(route);
                if !self.all {
                    break;
                }
            }
        }
        if chosen.is_empty() {
            match &self.default {
                Some(d) => chosen.push(d),
                None => return Ok((Outcome::default(), vec![item])),
            }
        }
        drop(doc);
        let mut outcome = Outcome::default();
        let mut next = Vec::new();
        for route in chosen {
            let items = run_all(&route.steps, vec![item.clone()], cx, &mut outcome).await?;
            match route.sink {
                Some(sink) => outcome
                    .deliveries
                    .extend(items.into_iter().map(|i| (sink, i))),
                None => next.extend(items),
            }
        }
        Ok((outcome, next))
    }
}
