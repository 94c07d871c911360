//! `timeseries`: the periods of an ENTSO-E (IEC 62325) time series become one message per
//! position, each with its own UTC start and end.
//!
//! A period gives an interval (`timeInterval.start`, `timeInterval.end`), a `resolution` (an
//! ISO 8601 duration) and points numbered by `position` from 1. Position `p` covers
//! `[start + (p - 1) × resolution, start + p × resolution)`. A resolution of time units only
//! (`PT15M`, `PT60M`, `PT1H`) is a fixed length and steps in UTC; one of calendar units only
//! (`P1D`, `P7D`, `P1W`, `P1M`, `P1Y`) steps in the local calendar of `timezone`, so that a
//! `P1D` point lasts 23 hours on the day clocks go forward and 25 on the day they go back.
//!
//! Curve type `A01` must give every position; `A03` leaves out a point equal to the previous
//! one, and the step writes it back (the previous point's fields with the missing position).
//! Anything that does not add up (an interval that is not a whole number of resolutions, a
//! position out of range or given twice, a gap in an `A01` curve...) is
//! [`ErrorCode::InvalidTimeSeries`], with a reason that names the period, its interval and
//! resolution, and the position at fault.

use std::collections::BTreeMap;
use std::fmt;

use jiff::fmt::temporal::SpanParser;
use jiff::tz::{TimeZone, TimeZoneDatabase};
use jiff::{SignedDuration, Span, Timestamp};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{type_name, StepContext, Transform, TransformKind};
use super::run::MAX_MESSAGES_PER_INPUT;
use crate::error::{BuildError, ErrorCode, StepError};
use crate::jmes::Expr;
use crate::message::Payload;

/// The most positions one period may have (a year of 5-minute points is 105,408): a bound
/// on what one message may become, whatever its interval says.
pub const MAX_POSITIONS: u64 = 110_000;

/// `kind = "timeseries"`.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeseriesConfig {
    /// JMESPath on the message giving one period object or a list of them.
    #[serde(default = "default_period")]
    pub period: String,
    /// JMESPath on a period giving its points (a list, or one point object).
    #[serde(default = "default_points")]
    pub points: String,
    /// JMESPath on the message giving the curve type: `A01` (every position present) or
    /// `A03` (an absent position repeats the previous point); absent or null: `A01`.
    #[serde(default = "default_curve_type")]
    pub curve_type: String,
    /// JMESPath on the message giving an object whose fields every point message carries
    /// (the point's own fields win on a clash).
    #[serde(default)]
    pub merge: Option<String>,
    /// IANA time zone whose calendar the day, week, month and year resolutions follow.
    #[serde(default = "default_timezone")]
    pub timezone: String,
}

fn default_period() -> String {
    "Period".into()
}

fn default_points() -> String {
    "Point".into()
}

fn default_curve_type() -> String {
    "curveType".into()
}

fn default_timezone() -> String {
    "Europe/Brussels".into()
}

impl TimeseriesConfig {
    /// Compiles the expressions and finds the time zone (in the zone data compiled into
    /// gridflow, so that the result does not depend on the host's `/usr/share/zoneinfo`).
    pub fn compile(&self) -> Result<Timeseries, BuildError> {
        let compile = |key: &str, src: &str| Expr::compile(src).map_err(|e| e.at(key));
        let zone = TimeZoneDatabase::bundled()
            .get(&self.timezone)
            .map_err(|_| {
                BuildError::at("timezone", format!("unknown time zone `{}`", self.timezone))
                    .with_hint("an IANA time zone name, such as Europe/Brussels or UTC")
            })?;
        Ok(Timeseries {
            period: compile("period", &self.period)?,
            points: compile("points", &self.points)?,
            curve_type: compile("curve_type", &self.curve_type)?,
            merge: self
                .merge
                .as_deref()
                .map(|m| compile("merge", m))
                .transpose()?,
            zone,
        })
    }
}

impl TransformKind for TimeseriesConfig {
    const KIND: &'static str = "timeseries";
    const EXAMPLE: &'static str = r#"[[steps]]
kind = "timeseries"
period = "Period"
points = "Point"
curve_type = "curveType"
merge = "{area: area}"
timezone = "Europe/Brussels""#;
    const SAMPLE: &'static str = r#"{"area": "10YBE----------2", "curveType": "A03",
 "Period": {"timeInterval": {"start": "2026-03-28T23:00Z", "end": "2026-03-29T22:00Z"},
            "resolution": "PT60M",
            "Point": [{"position": "1", "quantity": "9175"}, {"position": "3", "quantity": "9012"}]}}"#;
    type Transform = Timeseries;

    fn compile_in(&self, _: &StepContext) -> Result<Timeseries, BuildError> {
        self.compile()
    }
}

/// The running `timeseries` step.
#[derive(Debug)]
pub struct Timeseries {
    period: Expr,
    points: Expr,
    curve_type: Expr,
    merge: Option<Expr>,
    zone: TimeZone,
}

/// How absent positions are read.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Curve {
    /// Every position is present.
    A01,
    /// An absent position repeats the previous point.
    A03,
}

/// The length of one position.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// Time units only: the same length every time, stepped in UTC.
    Fixed(SignedDuration),
    /// Calendar units (days, weeks, months, years): stepped in the local calendar.
    Calendar(Span),
}

/// One period's timeline: its bounds, as written and parsed, and its resolution.
struct Timeline<'a> {
    /// The period's number in the message, from 1 (for messages).
    number: usize,
    start_text: &'a str,
    end_text: &'a str,
    resolution: &'a str,
    start: Timestamp,
    step: Step,
    /// How many positions the interval holds.
    positions: u64,
}

impl fmt::Display for Timeline<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timeseries: period {} ({}/{}, resolution {}",
            self.number, self.start_text, self.end_text, self.resolution
        )?;
        if self.positions > 0 {
            write!(f, ", {} positions", self.positions)?;
        }
        f.write_str(")")
    }
}

fn invalid(message: String) -> StepError {
    StepError::new(ErrorCode::InvalidTimeSeries, message)
}

impl Transform for Timeseries {
    fn process(&self, payload: Payload, out: &mut Vec<Payload>) -> Result<(), StepError> {
        let message = payload.into_json()?;
        let merged = match &self.merge {
            Some(merge) => match merge.search(&message)? {
                Value::Object(fields) => fields,
                Value::Null => Map::new(),
                other => {
                    return Err(StepError::new(
                        ErrorCode::UnexpectedShape,
                        format!(
                            "timeseries: `merge` must give an object, got {}",
                            type_name(&other)
                        ),
                    ))
                }
            },
            None => Map::new(),
        };
        let curve = match self.curve_type.search(&message)? {
            Value::Null => Curve::A01,
            Value::String(s) if s == "A01" => Curve::A01,
            Value::String(s) if s == "A03" => Curve::A03,
            other => {
                return Err(invalid(format!(
                    "timeseries: curve type {other} at `{}` is not A01 or A03",
                    self.curve_type.source()
                )))
            }
        };
        let periods = match self.period.search(&message)? {
            Value::Array(periods) => periods,
            period @ Value::Object(_) => vec![period],
            Value::Null => {
                return Err(invalid(format!(
                    "timeseries: no period at `{}`",
                    self.period.source()
                )))
            }
            other => {
                return Err(invalid(format!(
                    "timeseries: `{}` gave {}, not a period object or a list of them",
                    self.period.source(),
                    type_name(&other)
                )))
            }
        };
        for (i, period) in periods.iter().enumerate() {
            self.period_points(i + 1, period, curve, &merged, out)?;
        }
        Ok(())
    }
}

impl Timeseries {
    /// Pushes one message per position of `period` (the `number`th of the message).
    fn period_points(
        &self,
        number: usize,
        period: &Value,
        curve: Curve,
        merged: &Map<String, Value>,
        out: &mut Vec<Payload>,
    ) -> Result<(), StepError> {
        // What this input may still become (its earlier periods and messages are in `out`).
        let budget = MAX_MESSAGES_PER_INPUT.saturating_sub(out.len()) as u64;
        let timeline = self.timeline(number, period, budget)?;
        let points = match self.points.search(period)? {
            Value::Array(points) => points,
            point @ Value::Object(_) => vec![point],
            Value::Null => Vec::new(),
            other => {
                return Err(invalid(format!(
                    "{timeline}: `{}` gave {}, not a list of points",
                    self.points.source(),
                    type_name(&other)
                )))
            }
        };
        let mut by_position = BTreeMap::new();
        for point in points {
            let Value::Object(fields) = point else {
                return Err(invalid(format!(
                    "{timeline}: a point is {}, not an object",
                    type_name(&point)
                )));
            };
            let position = position_of(&fields).map_err(|e| invalid(format!("{timeline}: {e}")))?;
            if position > timeline.positions {
                return Err(invalid(format!(
                    "{timeline}: position {position} is beyond the interval"
                )));
            }
            if by_position.insert(position, fields).is_some() {
                return Err(invalid(format!(
                    "{timeline}: position {position} is given twice"
                )));
            }
        }
        out.reserve(timeline.positions as usize);
        let mut previous: Option<&Map<String, Value>> = None;
        for position in 1..=timeline.positions {
            let fields = match (by_position.get(&position), curve, previous) {
                (Some(fields), _, _) => fields,
                (None, Curve::A03, Some(previous)) => previous,
                (None, Curve::A03, None) => {
                    return Err(invalid(format!(
                        "{timeline}: position 1 is missing (an A03 curve repeats the previous point, and position 1 has none)"
                    )))
                }
                (None, Curve::A01, _) => {
                    return Err(invalid(format!(
                        "{timeline}: position {position} is missing from an A01 curve (every position must be given)"
                    )))
                }
            };
            previous = Some(fields);
            let (start, end) = timeline.bounds(position, &self.zone)?;
            let mut event = merged.clone();
            event.extend(fields.iter().map(|(k, v)| (k.clone(), v.clone())));
            event.insert("position".into(), Value::from(position));
            event.insert("start".into(), Value::String(start.to_string()));
            event.insert("end".into(), Value::String(end.to_string()));
            event.insert(
                "resolution".into(),
                Value::String(timeline.resolution.to_string()),
            );
            out.push(Payload::Json(Value::Object(event)));
        }
        Ok(())
    }

    /// Reads a period's interval and resolution and counts its positions.
    fn timeline<'a>(
        &self,
        number: usize,
        period: &'a Value,
        budget: u64,
    ) -> Result<Timeline<'a>, StepError> {
        let text = |path: [&str; 2]| {
            let value = path.iter().try_fold(period, |v, k| v.get(k));
            value.and_then(Value::as_str)
        };
        let start_text = text(["timeInterval", "start"]);
        let end_text = text(["timeInterval", "end"]);
        let resolution = period.get("resolution").and_then(Value::as_str);
        let mut timeline = Timeline {
            number,
            start_text: start_text.unwrap_or("?"),
            end_text: end_text.unwrap_or("?"),
            resolution: resolution.unwrap_or("?"),
            start: Timestamp::UNIX_EPOCH,
            step: Step::Fixed(SignedDuration::ZERO),
            positions: 0,
        };
        let (Some(start_text), Some(end_text), Some(resolution)) = (start_text, end_text, resolution)
        else {
            return Err(invalid(format!(
                "{timeline}: a period needs `timeInterval.start`, `timeInterval.end` and `resolution` as text"
            )));
        };
        let instant = |text: &str, name: &str| {
            text.parse::<Timestamp>().map_err(|_| {
                invalid(format!(
                    "{timeline}: the interval {name} `{text}` is not a UTC date and time (2026-01-13T23:00Z)"
                ))
            })
        };
        let start = instant(start_text, "start")?;
        let end = instant(end_text, "end")?;
        timeline.step = parse_resolution(resolution)
            .map_err(|reason| invalid(format!("{timeline}: unknown resolution: {reason}")))?;
        timeline.start = start;
        if end < start {
            return Err(invalid(format!(
                "{timeline}: the interval ends before it starts"
            )));
        }
        if end == start {
            return Err(invalid(format!("{timeline}: the interval is empty")));
        }
        timeline.positions = timeline.count(end, &self.zone, budget)?;
        Ok(timeline)
    }
}

impl Timeline<'_> {
    /// How many resolutions fit from the start to `end`: an error unless a whole number, or
    /// when more than `budget` (what the input may still become, see
    /// [`MAX_MESSAGES_PER_INPUT`]) or [`MAX_POSITIONS`].
    fn count(&self, end: Timestamp, zone: &TimeZone, budget: u64) -> Result<u64, StepError> {
        let not_whole = || {
            invalid(format!(
                "{self}: the interval is not a whole number of resolutions"
            ))
        };
        let cap = MAX_POSITIONS.min(budget);
        let too_long = || {
            if cap < MAX_POSITIONS {
                StepError::new(
                    ErrorCode::TooManyMessages,
                    format!(
                        "{self}: with it the input would become more than {MAX_MESSAGES_PER_INPUT} messages"
                    ),
                )
            } else {
                invalid(format!(
                    "{self}: the interval holds more than {MAX_POSITIONS} positions"
                ))
            }
        };
        match self.step {
            Step::Fixed(length) => {
                let total = end.duration_since(self.start).as_nanos();
                let length = length.as_nanos();
                if total % length != 0 {
                    return Err(not_whole());
                }
                let count = u64::try_from(total / length).unwrap_or(u64::MAX);
                if count > MAX_POSITIONS {
                    return Err(invalid(format!(
                        "{self}: the interval holds more than {MAX_POSITIONS} positions"
                    )));
                }
                if count > cap {
                    return Err(too_long());
                }
                Ok(count)
            }
            Step::Calendar(_) => {
                for n in 1..=cap {
                    let bound = self.offset(n, zone)?;
                    if bound == end {
                        return Ok(n);
                    }
                    if bound > end {
                        return Err(not_whole());
                    }
                }
                Err(too_long())
            }
        }
    }

    /// The start and end of `position` (from 1).
    fn bounds(&self, position: u64, zone: &TimeZone) -> Result<(Timestamp, Timestamp), StepError> {
        Ok((self.offset(position - 1, zone)?, self.offset(position, zone)?))
    }

    /// The instant `n` resolutions after the start, from the start (not step by step, so
    /// that P1M from 31 January gives 31 March at n = 2, not 28 March).
    fn offset(&self, n: u64, zone: &TimeZone) -> Result<Timestamp, StepError> {
        let overflow = || invalid(format!("{self}: position {n} is out of the range of dates"));
        let n = i64::try_from(n).map_err(|_| overflow())?;
        match self.step {
            Step::Fixed(length) => length
                .checked_mul(i32::try_from(n).map_err(|_| overflow())?)
                .and_then(|d| self.start.checked_add(d).ok())
                .ok_or_else(overflow),
            Step::Calendar(span) => {
                let local = self.start.to_zoned_datetime(zone.clone());
                span.checked_mul(n)
                    .and_then(|span| local.checked_add(span))
                    .map(|t| t.timestamp())
                    .map_err(|_| overflow())
            }
        }
    }
}

/// A position as written (`"7"` from XML, or `7`): an integer from 1.
fn position_of(fields: &Map<String, Value>) -> Result<u64, String> {
    let position = match fields.get("position") {
        None | Some(Value::Null) => return Err("a point has no position".into()),
        Some(Value::Number(n)) => n.as_i64().map(i128::from),
        Some(Value::String(s)) => s.trim().parse::<i128>().ok(),
        Some(_) => None,
    };
    let text = || fields.get("position").map(|v| v.to_string()).unwrap_or_default();
    match position {
        None => Err(format!("position {} is not a whole number", text())),
        Some(p) if p < 1 => Err(format!("position {} is below 1", text())),
        Some(p) => u64::try_from(p).map_err(|_| format!("position {} is beyond the interval", text())),
    }
}

/// An ISO 8601 duration of time units only (fixed) or calendar units only; not zero, not
/// negative.
fn parse_resolution(text: &str) -> Result<Step, String> {
    if !text.starts_with('P') {
        return Err(format!("`{text}` is not an ISO 8601 duration (PT15M, PT60M, P1D)"));
    }
    let span = SpanParser::new()
        .parse_span(text)
        .map_err(|_| format!("`{text}` is not an ISO 8601 duration (PT15M, PT60M, P1D)"))?;
    if span.is_zero() {
        return Err(format!("`{text}` is zero"));
    }
    let calendar = span.get_years() != 0
        || span.get_months() != 0
        || span.get_weeks() != 0
        || span.get_days() != 0;
    let time = span.get_hours() != 0
        || span.get_minutes() != 0
        || span.get_seconds() != 0
        || span.get_milliseconds() != 0
        || span.get_microseconds() != 0
        || span.get_nanoseconds() != 0;
    match (calendar, time) {
        (true, true) => Err(format!(
            "`{text}` mixes calendar units (days and longer) and time units"
        )),
        (true, false) => Ok(Step::Calendar(span)),
        _ => SignedDuration::try_from(span)
            .map(Step::Fixed)
            .map_err(|_| format!("`{text}` is out of range")),
    }
}

#[cfg(test)]
mod tests {
    //! The expected instants are literals worked out by hand from the rules of the calendar
    //! (CET is UTC+1, CEST UTC+2; in 2026 clocks go forward on 29 March at 02:00 local, 01:00
    //! UTC, and back on 25 October at 03:00 local, 01:00 UTC), not computed with jiff.

    use super::super::{parse, run};
    use super::*;
    use serde_json::json;

    fn step(extra: &str) -> Box<dyn super::super::Step> {
        parse(&format!("kind = 'timeseries'\n{extra}"))
            .build()
            .unwrap()
    }

    /// A period of `positions` points (1..=positions, `q` = the position).
    fn period(start: &str, end: &str, resolution: &str, positions: &[u64]) -> Value {
        let points: Vec<Value> = positions
            .iter()
            .map(|p| json!({"position": p.to_string(), "q": p}))
            .collect();
        json!({"timeInterval": {"start": start, "end": end}, "resolution": resolution, "Point": points})
    }

    fn events(message: Value) -> Vec<Value> {
        let step = step("");
        run(&*step, Payload::Json(message))
            .unwrap()
            .into_iter()
            .map(|p| match p {
                Payload::Json(v) => v,
                _ => panic!("timeseries emits documents, not bytes"),
            })
            .collect()
    }

    fn error(message: Value) -> StepError {
        run(&*step(""), Payload::Json(message)).unwrap_err()
    }

    #[test]
    fn one_input_becomes_at_most_max_messages_per_input() {
        // Two A03 periods of a year of 5-minute points (105,120 positions each), from one
        // point each: a few hundred bytes that would become 210,240 messages.
        let year = period("2025-01-01T00:00Z", "2026-01-01T00:00Z", "PT5M", &[1]);
        let one = events(json!({"curveType": "A03", "Period": year.clone()}));
        assert_eq!(one.len(), 105_120);
        let e = error(json!({"curveType": "A03", "Period": [year.clone(), year]}));
        assert_eq!(e.code, ErrorCode::TooManyMessages, "{}", e.message);
        assert!(e.message.contains("period 2"), "{}", e.message);
    }

    /// The (start, end) of every event.
    fn bounds(events: &[Value]) -> Vec<(String, String)> {
        events
            .iter()
            .map(|e| {
                (
                    e["start"].as_str().unwrap().to_string(),
                    e["end"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn all(n: u64) -> Vec<u64> {
        (1..=n).collect()
    }

    struct Case {
        name: &'static str,
        start: &'static str,
        end: &'static str,
        resolution: &'static str,
        positions: u64,
        /// (position, start, end) checked among the events.
        expect: &'static [(u64, &'static str, &'static str)],
    }

    const CASES: &[Case] = &[
        Case {
            name: "PT15M, a winter day in CET",
            start: "2026-01-13T23:00Z",
            end: "2026-01-14T23:00Z",
            resolution: "PT15M",
            positions: 96,
            expect: &[
                (1, "2026-01-13T23:00:00Z", "2026-01-13T23:15:00Z"),
                (2, "2026-01-13T23:15:00Z", "2026-01-13T23:30:00Z"),
                (5, "2026-01-14T00:00:00Z", "2026-01-14T00:15:00Z"),
                (96, "2026-01-14T22:45:00Z", "2026-01-14T23:00:00Z"),
            ],
        },
        Case {
            name: "PT60M, the spring change (23 hours)",
            start: "2026-03-28T23:00Z",
            end: "2026-03-29T22:00Z",
            resolution: "PT60M",
            positions: 23,
            expect: &[
                (1, "2026-03-28T23:00:00Z", "2026-03-29T00:00:00Z"),
                (2, "2026-03-29T00:00:00Z", "2026-03-29T01:00:00Z"),
                (3, "2026-03-29T01:00:00Z", "2026-03-29T02:00:00Z"),
                (23, "2026-03-29T21:00:00Z", "2026-03-29T22:00:00Z"),
            ],
        },
        Case {
            name: "PT60M, the autumn change (25 hours)",
            start: "2026-10-24T22:00Z",
            end: "2026-10-25T23:00Z",
            resolution: "PT60M",
            positions: 25,
            expect: &[
                (1, "2026-10-24T22:00:00Z", "2026-10-24T23:00:00Z"),
                (4, "2026-10-25T01:00:00Z", "2026-10-25T02:00:00Z"),
                (25, "2026-10-25T22:00:00Z", "2026-10-25T23:00:00Z"),
            ],
        },
        Case {
            name: "PT1H is PT60M",
            start: "2026-01-13T23:00:00Z",
            end: "2026-01-14T01:00:00Z",
            resolution: "PT1H",
            positions: 2,
            expect: &[(2, "2026-01-14T00:00:00Z", "2026-01-14T01:00:00Z")],
        },
        Case {
            name: "PT30M, the spring change (46 half hours)",
            start: "2026-03-28T23:00Z",
            end: "2026-03-29T22:00Z",
            resolution: "PT30M",
            positions: 46,
            expect: &[
                (1, "2026-03-28T23:00:00Z", "2026-03-28T23:30:00Z"),
                (6, "2026-03-29T01:30:00Z", "2026-03-29T02:00:00Z"),
                (46, "2026-03-29T21:30:00Z", "2026-03-29T22:00:00Z"),
            ],
        },
        Case {
            name: "P1D across the spring change: the 29th lasts 23 hours",
            start: "2026-03-27T23:00Z",
            end: "2026-03-30T22:00Z",
            resolution: "P1D",
            positions: 3,
            expect: &[
                (1, "2026-03-27T23:00:00Z", "2026-03-28T23:00:00Z"),
                (2, "2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z"),
                (3, "2026-03-29T22:00:00Z", "2026-03-30T22:00:00Z"),
            ],
        },
        Case {
            name: "P1D across the autumn change: the 25th lasts 25 hours",
            start: "2026-10-23T22:00Z",
            end: "2026-10-26T23:00Z",
            resolution: "P1D",
            positions: 3,
            expect: &[
                (1, "2026-10-23T22:00:00Z", "2026-10-24T22:00:00Z"),
                (2, "2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z"),
                (3, "2026-10-25T23:00:00Z", "2026-10-26T23:00:00Z"),
            ],
        },
        Case {
            name: "P7D, weeks from Monday 23 March: the first holds the spring change",
            start: "2026-03-22T23:00Z",
            end: "2026-04-05T22:00Z",
            resolution: "P7D",
            positions: 2,
            expect: &[
                (1, "2026-03-22T23:00:00Z", "2026-03-29T22:00:00Z"),
                (2, "2026-03-29T22:00:00Z", "2026-04-05T22:00:00Z"),
            ],
        },
        Case {
            name: "P1M, January to April: March holds the spring change",
            start: "2025-12-31T23:00Z",
            end: "2026-03-31T22:00Z",
            resolution: "P1M",
            positions: 3,
            expect: &[
                (1, "2025-12-31T23:00:00Z", "2026-01-31T23:00:00Z"),
                (2, "2026-01-31T23:00:00Z", "2026-02-28T23:00:00Z"),
                (3, "2026-02-28T23:00:00Z", "2026-03-31T22:00:00Z"),
            ],
        },
        Case {
            name: "P1Y, 2026 and 2027",
            start: "2025-12-31T23:00Z",
            end: "2027-12-31T23:00Z",
            resolution: "P1Y",
            positions: 2,
            expect: &[
                (1, "2025-12-31T23:00:00Z", "2026-12-31T23:00:00Z"),
                (2, "2026-12-31T23:00:00Z", "2027-12-31T23:00:00Z"),
            ],
        },
    ];

    #[test]
    fn every_position_gets_its_utc_start_and_end() {
        for case in CASES {
            let message = json!({"Period": period(case.start, case.end, case.resolution, &all(case.positions))});
            let events = events(message);
            assert_eq!(events.len() as u64, case.positions, "{}", case.name);
            for (i, e) in events.iter().enumerate() {
                assert_eq!(e["position"], json!(i as u64 + 1), "{}", case.name);
                assert_eq!(e["q"], json!(i as u64 + 1), "{}", case.name);
                assert_eq!(e["resolution"], json!(case.resolution), "{}", case.name);
            }
            // Consecutive: each point ends where the next starts, the last at the end.
            let b = bounds(&events);
            for pair in b.windows(2) {
                assert_eq!(pair[0].1, pair[1].0, "{}", case.name);
            }
            for (position, start, end) in case.expect {
                let got = &b[*position as usize - 1];
                assert_eq!(
                    (got.0.as_str(), got.1.as_str()),
                    (*start, *end),
                    "{}: position {position}",
                    case.name
                );
            }
        }
    }

    #[test]
    fn the_calendar_follows_the_configured_time_zone() {
        // In UTC every day has 24 hours: the same three days as the spring case above.
        let step = step("timezone = 'UTC'");
        let message = json!({"Period": period("2026-03-28T00:00Z", "2026-03-31T00:00Z", "P1D", &all(3))});
        let out = run(&*step, Payload::Json(message)).unwrap();
        let starts: Vec<Value> = out
            .iter()
            .map(|p| match p {
                Payload::Json(v) => v["start"].clone(),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            starts,
            vec![
                json!("2026-03-28T00:00:00Z"),
                json!("2026-03-29T00:00:00Z"),
                json!("2026-03-30T00:00:00Z")
            ]
        );
        // In Europe/Brussels a UTC-midnight start is 01:00 local: a P1D period from there
        // to UTC midnight three days later is not whole days (the 29th has 23 hours).
        let message = json!({"Period": period("2026-03-28T00:00Z", "2026-03-31T00:00Z", "P1D", &all(3))});
        assert!(error(message).message.contains("whole number"));
    }

    #[test]
    fn a03_repeats_the_previous_point_in_the_middle_and_at_the_end() {
        // Positions 3, 4 and 7, 8 are absent; 8 is the last of the interval.
        let message = json!({
            "area": "10YFR-RTE------C",
            "curveType": "A03",
            "Period": period("2026-01-13T23:00Z", "2026-01-14T07:00Z", "PT60M", &[1, 2, 5, 6]),
        });
        let step = step("merge = '{area: area}'");
        let out: Vec<Value> = run(&*step, Payload::Json(message))
            .unwrap()
            .into_iter()
            .map(|p| match p {
                Payload::Json(v) => v,
                _ => unreachable!(),
            })
            .collect();
        let q: Vec<(Value, Value)> = out
            .iter()
            .map(|e| (e["position"].clone(), e["q"].clone()))
            .collect();
        assert_eq!(
            q,
            vec![
                (json!(1), json!(1)),
                (json!(2), json!(2)),
                (json!(3), json!(2)),
                (json!(4), json!(2)),
                (json!(5), json!(5)),
                (json!(6), json!(6)),
                (json!(7), json!(6)),
                (json!(8), json!(6)),
            ]
        );
        assert_eq!(
            out[3],
            json!({"area": "10YFR-RTE------C", "position": 4, "q": 2, "resolution": "PT60M",
                   "start": "2026-01-14T02:00:00Z", "end": "2026-01-14T03:00:00Z"})
        );
        assert_eq!(out[7]["end"], json!("2026-01-14T07:00:00Z"));
    }

    #[test]
    fn points_come_out_in_position_order_with_the_merge_fields() {
        let mut p = period("2026-01-13T23:00Z", "2026-01-14T01:00Z", "PT60M", &[2, 1]);
        p["Point"][0]["area"] = json!("point's own");
        let message = json!({"area": "BE", "unit": "MAW", "Period": [p]});
        let step = step("merge = '{area: area, unit: unit}'");
        let out = run(&*step, Payload::Json(message)).unwrap();
        assert_eq!(
            out,
            vec![
                Payload::Json(json!({"area": "BE", "unit": "MAW", "position": 1, "q": 1,
                    "start": "2026-01-13T23:00:00Z", "end": "2026-01-14T00:00:00Z", "resolution": "PT60M"})),
                Payload::Json(json!({"area": "point's own", "unit": "MAW", "position": 2, "q": 2,
                    "start": "2026-01-14T00:00:00Z", "end": "2026-01-14T01:00:00Z", "resolution": "PT60M"})),
            ]
        );
    }

    #[test]
    fn several_periods_one_point_object_and_numeric_positions() {
        let message = json!({"Period": [
            {"timeInterval": {"start": "2026-01-13T23:00Z", "end": "2026-01-14T00:00Z"},
             "resolution": "PT60M", "Point": {"position": 1, "q": "a"}},
            {"timeInterval": {"start": "2026-01-14T00:00Z", "end": "2026-01-14T00:30Z"},
             "resolution": "PT15M", "Point": [{"position": 2, "q": "c"}, {"position": 1, "q": "b"}]},
        ]});
        let b = bounds(&events(message));
        assert_eq!(
            b,
            vec![
                ("2026-01-13T23:00:00Z".into(), "2026-01-14T00:00:00Z".into()),
                ("2026-01-14T00:00:00Z".into(), "2026-01-14T00:15:00Z".into()),
                ("2026-01-14T00:15:00Z".into(), "2026-01-14T00:30:00Z".into()),
            ]
        );
    }

    #[test]
    fn an_empty_list_of_periods_gives_no_message() {
        assert!(events(json!({"Period": []})).is_empty());
    }

    /// Each broken period, and a piece of the reason it must give.
    #[test]
    fn every_inconsistency_is_an_invalid_time_series_naming_what_is_wrong() {
        let day = ("2026-01-13T23:00Z", "2026-01-14T23:00Z");
        let cases: Vec<(&str, Value, &[&str])> = vec![
            (
                "interval not a whole number of resolutions",
                json!({"Period": period("2026-01-13T23:00Z", "2026-01-13T23:50Z", "PT15M", &all(3))}),
                &["not a whole number of resolutions", "2026-01-13T23:00Z/2026-01-13T23:50Z", "PT15M"],
            ),
            (
                "a P1D period that is not whole local days",
                json!({"Period": period("2026-03-28T23:00Z", "2026-03-29T23:00Z", "P1D", &all(1))}),
                &["not a whole number of resolutions", "P1D"],
            ),
            (
                "end before start",
                json!({"Period": period(day.1, day.0, "PT60M", &all(1))}),
                &["ends before it starts", "2026-01-14T23:00Z/2026-01-13T23:00Z"],
            ),
            (
                "an empty interval",
                json!({"Period": period(day.0, day.0, "PT60M", &[])}),
                &["the interval is empty"],
            ),
            (
                "position 0",
                json!({"Period": period(day.0, day.1, "PT60M", &[0, 1])}),
                &["position \"0\" is below 1", "PT60M", "24 positions"],
            ),
            (
                "a negative position",
                json!({"Period": {"timeInterval": {"start": day.0, "end": day.1}, "resolution": "PT60M",
                                  "Point": [{"position": -3}]}}),
                &["position -3 is below 1"],
            ),
            (
                "a position beyond the interval",
                json!({"Period": period(day.0, day.1, "PT60M", &all(25))}),
                &["position 25 is beyond the interval", "2026-01-13T23:00Z/2026-01-14T23:00Z", "PT60M", "24 positions"],
            ),
            (
                "a duplicate position",
                json!({"Period": period(day.0, day.1, "PT60M", &[1, 2, 2, 3])}),
                &["position 2 is given twice"],
            ),
            (
                "an A01 gap",
                json!({"Period": period(day.0, day.1, "PT60M", &[1, 2, 4])}),
                &["position 3 is missing from an A01 curve"],
            ),
            (
                "an A01 curve short at the end",
                json!({"curveType": "A01", "Period": period(day.0, day.1, "PT60M", &all(23))}),
                &["position 24 is missing from an A01 curve"],
            ),
            (
                "an A03 curve without position 1",
                json!({"curveType": "A03", "Period": period(day.0, day.1, "PT60M", &[2, 3])}),
                &["position 1 is missing"],
            ),
            (
                "an unknown resolution",
                json!({"Period": period(day.0, day.1, "PT15X", &all(1))}),
                &["unknown resolution", "PT15X"],
            ),
            (
                "a resolution that is not ISO 8601",
                json!({"Period": period(day.0, day.1, "15 minutes", &all(1))}),
                &["unknown resolution", "15 minutes"],
            ),
            (
                "a zero resolution",
                json!({"Period": period(day.0, day.1, "PT0M", &all(1))}),
                &["unknown resolution", "zero"],
            ),
            (
                "a mixed resolution",
                json!({"Period": period(day.0, day.1, "P1DT1H", &all(1))}),
                &["unknown resolution", "mixes"],
            ),
            (
                "a non-numeric position",
                json!({"Period": {"timeInterval": {"start": day.0, "end": day.1}, "resolution": "PT60M",
                                  "Point": [{"position": "one"}]}}),
                &["position \"one\" is not a whole number"],
            ),
            (
                "a fractional position",
                json!({"Period": {"timeInterval": {"start": day.0, "end": day.1}, "resolution": "PT60M",
                                  "Point": [{"position": 1.5}]}}),
                &["position 1.5 is not a whole number"],
            ),
            (
                "a point without position",
                json!({"Period": {"timeInterval": {"start": day.0, "end": day.1}, "resolution": "PT60M",
                                  "Point": [{"q": 1}]}}),
                &["has no position"],
            ),
            (
                "a point that is not an object",
                json!({"Period": {"timeInterval": {"start": day.0, "end": day.1}, "resolution": "PT60M",
                                  "Point": [3]}}),
                &["a point is a number"],
            ),
            (
                "a start that is not a date",
                json!({"Period": period("yesterday", day.1, "PT60M", &all(1))}),
                &["start `yesterday` is not a UTC date and time"],
            ),
            (
                "a local time without offset",
                json!({"Period": period("2026-01-13T23:00", day.1, "PT60M", &all(1))}),
                &["start `2026-01-13T23:00` is not a UTC date and time"],
            ),
            (
                "no resolution",
                json!({"Period": {"timeInterval": {"start": day.0, "end": day.1}, "Point": []}}),
                &["needs `timeInterval.start`, `timeInterval.end` and `resolution`"],
            ),
            (
                "no period",
                json!({"TimeSeries": {}}),
                &["no period at `Period`"],
            ),
            (
                "an unknown curve type",
                json!({"curveType": "A02", "Period": period(day.0, day.1, "PT60M", &all(24))}),
                &["curve type \"A02\"", "not A01 or A03"],
            ),
            (
                "an interval of more than MAX_POSITIONS",
                json!({"Period": period("2000-01-01T00:00Z", "2026-01-01T00:00Z", "PT1M", &all(1))}),
                &["more than 110000 positions"],
            ),
            (
                "a one-nanosecond resolution over a day",
                json!({"Period": period(day.0, day.1, "PT0.000000001S", &all(1))}),
                &["more than 110000 positions"],
            ),
            (
                "a position too large for any interval",
                json!({"Period": {"timeInterval": {"start": day.0, "end": day.1}, "resolution": "PT60M",
                                  "Point": [{"position": "99999999999999999999999"}]}}),
                &["is beyond the interval"],
            ),
            (
                "a calendar interval of more than MAX_POSITIONS",
                json!({"Period": period("1999-12-31T23:00Z", "2400-12-31T23:00Z", "P1D", &all(1))}),
                &["more than 110000 positions"],
            ),
        ];
        for (name, message, reasons) in cases {
            let e = error(message);
            assert_eq!(e.code, ErrorCode::InvalidTimeSeries, "{name}: {}", e.message);
            for reason in reasons {
                assert!(e.message.contains(reason), "{name}: {:?} lacks {reason:?}", e.message);
            }
        }
    }

    #[test]
    fn seconds_and_offsets_in_the_interval_are_read() {
        let message = json!({"Period": period("2026-01-14T00:00:00+01:00", "2026-01-14T00:30:00.000Z", "PT30M", &all(3))});
        let b = bounds(&events(message));
        assert_eq!(b[0].0, "2026-01-13T23:00:00Z");
        assert_eq!(b[2].1, "2026-01-14T00:30:00Z");
    }

    #[test]
    fn bad_config_fails_the_build() {
        let err = parse("kind = 'timeseries'\ntimezone = 'Europe/Nowhere'")
            .build()
            .err()
            .unwrap();
        assert_eq!(err.key.as_deref(), Some("timezone"));
        let err = parse("kind = 'timeseries'\npoints = 'a.['")
            .build()
            .err()
            .unwrap();
        assert_eq!(err.key.as_deref(), Some("points"));
    }

    #[test]
    fn a_merge_that_is_not_an_object_is_unexpected_shape() {
        let step = step("merge = 'area'");
        let message = json!({"area": "BE", "Period": period("2026-01-13T23:00Z", "2026-01-14T00:00Z", "PT60M", &all(1))});
        let e = run(&*step, Payload::Json(message)).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnexpectedShape);
    }
}
