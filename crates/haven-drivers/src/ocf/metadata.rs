//! An OCF agent's self-description (the XML its `meta-data` action prints)
//! and the check of a workload's parameters against it, so that a typo or
//! a missing required parameter is refused with the agent's own words
//! before the agent ever runs.
//!
//! Pure: parsing and checking take text and maps; running the agent is
//! [`super::run`]'s. Every input is bounded ([`METADATA_MAX_BYTES`],
//! [`PARAMS_MAX`], [`PARAM_VALUE_MAX_BYTES`], [`PARAM_NAME_MAX_BYTES`]).

use std::collections::BTreeMap;
use std::fmt;

/// Longest `meta-data` output accepted. The largest agents of the
/// resource-agents package print well under 100 KiB.
pub const METADATA_MAX_BYTES: usize = 1 << 20;
/// Most parameters one resource may pass to its agent.
pub const PARAMS_MAX: usize = 128;
/// Longest parameter value, in bytes (values travel in the environment).
pub const PARAM_VALUE_MAX_BYTES: usize = 4096;
/// Longest parameter name, in bytes.
pub const PARAM_NAME_MAX_BYTES: usize = 128;
/// Parameter names starting so are the cluster's own meta values
/// (`OCF_RESKEY_CRM_meta_timeout`, ...), never a resource's parameters.
pub const RESERVED_PARAM_PREFIX: &str = "CRM_meta_";
/// Most XML nodes parsed from one `meta-data` output (a bound on memory
/// beyond the byte bound: entities could otherwise multiply nodes).
const XML_NODES_MAX: u32 = 200_000;
/// How much of an agent's long description a missing-parameter error
/// quotes.
const LONGDESC_QUOTE_MAX: usize = 300;
/// The spellings of a boolean an agent understands. resource-agents'
/// `ocf_is_true` takes exactly the first list as true and anything else as
/// false, so "Yes" or "tRUE" would silently mean false: refused here.
const BOOLEAN_TRUE: [&str; 9] = ["yes", "true", "1", "YES", "TRUE", "True", "ja", "on", "ON"];
const BOOLEAN_FALSE: [&str; 8] = ["no", "false", "0", "NO", "FALSE", "False", "off", "OFF"];

/// What an agent says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentMetadata {
    /// The `name` of `<resource-agent>`, normally the agent's TYPE.
    pub name: String,
    /// The agent's own version (`<resource-agent version=..>`).
    pub version: Option<String>,
    /// The OCF API version it follows (`<version>`), e.g. `1.1`.
    pub ocf_version: Option<String>,
    pub shortdesc: String,
    pub longdesc: String,
    pub parameters: Vec<ParameterMeta>,
    pub actions: Vec<ActionMeta>,
    /// It has `promote` and `demote`: it can run in a promoted role.
    pub promotable: bool,
}

/// One parameter an agent takes (`OCF_RESKEY_<name>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParameterMeta {
    pub name: String,
    pub required: bool,
    /// No two resources of this agent may share the value.
    pub unique: bool,
    pub content_type: ContentType,
    pub default: Option<String>,
    pub shortdesc: String,
    pub longdesc: String,
}

/// The `type` of a parameter's `<content>`. Only the types a value can be
/// checked against have their own variant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContentType {
    String,
    Integer,
    NonNegativeInteger,
    Boolean,
    Port,
    /// One of the `<option value=..>`s.
    Select(Vec<String>),
    /// Any other type (`duration`, `timeout`, `version`, ...), unchecked.
    Other(String),
}

/// One action an agent advertises, with its advised timings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActionMeta {
    pub name: String,
    /// The minimum timeout the agent advises (OCF durations such as `20s`
    /// converted to ms; `None` when absent or not understood).
    pub timeout_ms: Option<u64>,
    pub interval_ms: Option<u64>,
    /// `OCF_CHECK_LEVEL` of this monitor.
    pub depth: Option<u32>,
    /// The role this entry is for (`Promoted`, `Unpromoted`, or the older
    /// `Master`, `Slave`).
    pub role: Option<String>,
}

impl AgentMetadata {
    pub fn parameter(&self, name: &str) -> Option<&ParameterMeta> {
        self.parameters.iter().find(|p| p.name == name)
    }

    /// The first advertised entry of action `name` (a promotable agent may
    /// list `monitor` once per role).
    pub fn action(&self, name: &str) -> Option<&ActionMeta> {
        self.actions.iter().find(|a| a.name == name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error(
        "meta-data output is larger than {max} bytes: the agent is broken or not an OCF agent \
         (run it with `meta-data` by hand to see what it prints)"
    )]
    TooLarge { max: usize },

    #[error("meta-data is not well-formed XML: {0} (run the agent with `meta-data` by hand)")]
    Xml(String),

    #[error(
        "meta-data's root element is <{root}>, not <resource-agent>: \
         this is not an OCF resource agent"
    )]
    NotResourceAgent { root: String },

    #[error(
        "meta-data's <resource-agent> has no `name` attribute: the agent's meta-data is broken"
    )]
    MissingName,

    #[error("meta-data's <parameter> number {index} has no `name` attribute: the agent's meta-data is broken")]
    ParameterWithoutName { index: usize },
}

/// One problem with the parameters given to an agent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("{count} parameters given, at most {max} are accepted: pass fewer parameters")]
    TooMany { count: usize, max: usize },

    #[error(
        "parameter name {name:?} is not usable: names are 1 to {max} characters of \
         [A-Za-z0-9_] (the agent reads it as OCF_RESKEY_<name>)",
        max = PARAM_NAME_MAX_BYTES
    )]
    InvalidName { name: String },

    #[error(
        "parameter {name:?} uses the reserved prefix {RESERVED_PARAM_PREFIX}: \
         those values are set by Haven, rename the parameter"
    )]
    ReservedName { name: String },

    #[error("parameter {name:?} is {bytes} bytes long, at most {max} are accepted: shorten it")]
    ValueTooLong {
        name: String,
        bytes: usize,
        max: usize,
    },

    #[error("parameter {name:?} contains a NUL byte, which cannot be passed in the environment: remove it")]
    NulInValue { name: String },

    #[error("agent {agent} has no parameter {name:?}: remove it, or use one of: {known}")]
    Unknown {
        agent: String,
        name: String,
        /// The agent's parameters, comma-separated.
        known: String,
    },

    #[error("agent {agent} requires parameter {name:?} ({shortdesc}): set it{}", describe(.longdesc))]
    MissingRequired {
        agent: String,
        name: String,
        shortdesc: String,
        longdesc: String,
    },

    #[error("parameter {name:?} = {value:?} is not {expected}: set {hint}")]
    WrongType {
        name: String,
        value: String,
        /// What the content type wants, e.g. `an integer`.
        expected: &'static str,
        /// The fix, e.g. `a whole number such as 30`.
        hint: String,
    },
}

fn describe(longdesc: &str) -> String {
    let flat = longdesc.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.is_empty() {
        return String::new();
    }
    format!(
        ". The agent says: {}",
        quote_bounded(&flat, LONGDESC_QUOTE_MAX)
    )
}

fn quote_bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContentType::String => f.write_str("string"),
            ContentType::Integer => f.write_str("integer"),
            ContentType::NonNegativeInteger => f.write_str("nonnegative_integer"),
            ContentType::Boolean => f.write_str("boolean"),
            ContentType::Port => f.write_str("port"),
            ContentType::Select(_) => f.write_str("select"),
            ContentType::Other(other) => f.write_str(other),
        }
    }
}

/// Parse an agent's `meta-data` output.
pub fn parse_metadata(xml: &str) -> Result<AgentMetadata, MetadataError> {
    if xml.len() > METADATA_MAX_BYTES {
        return Err(MetadataError::TooLarge {
            max: METADATA_MAX_BYTES,
        });
    }
    let options = roxmltree::ParsingOptions {
        // Agents start with <!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">;
        // roxmltree never fetches it and bounds entity expansion itself.
        allow_dtd: true,
        nodes_limit: XML_NODES_MAX,
        ..roxmltree::ParsingOptions::default()
    };
    let doc = roxmltree::Document::parse_with_options(xml, options)
        .map_err(|e| MetadataError::Xml(e.to_string()))?;
    let root = doc.root_element();
    if root.tag_name().name() != "resource-agent" {
        return Err(MetadataError::NotResourceAgent {
            root: root.tag_name().name().to_owned(),
        });
    }
    let name = root.attribute("name").ok_or(MetadataError::MissingName)?;
    let parameters = children(root, "parameters")
        .flat_map(|ps| children(ps, "parameter"))
        .enumerate()
        .map(|(index, p)| parse_parameter(p, index))
        .collect::<Result<Vec<_>, _>>()?;
    let actions: Vec<ActionMeta> = children(root, "actions")
        .flat_map(|acts| children(acts, "action"))
        .filter_map(parse_action)
        .collect();
    let has = |name: &str| actions.iter().any(|a| a.name == name);
    let promotable = has("promote") && has("demote");
    let ocf_version = children(root, "version").next().map(text_of);
    Ok(AgentMetadata {
        name: name.to_owned(),
        version: root.attribute("version").map(str::to_owned),
        ocf_version,
        shortdesc: description(root, "shortdesc"),
        longdesc: description(root, "longdesc"),
        parameters,
        actions,
        promotable,
    })
}

fn children<'a, 'i: 'a>(
    node: roxmltree::Node<'a, 'i>,
    tag: &'static str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> {
    node.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == tag)
}

/// All text under `node`, trimmed (CDATA and entities may split it).
fn text_of(node: roxmltree::Node<'_, '_>) -> String {
    let text: String = node
        .descendants()
        .filter(|d| d.is_text())
        .filter_map(|d| d.text())
        .collect();
    text.trim().to_owned()
}

/// A `shortdesc` or `longdesc` child: the English one (or one without a
/// language) if there is one, else the first.
fn description(node: roxmltree::Node<'_, '_>, tag: &'static str) -> String {
    let english = children(node, tag).find(|d| matches!(d.attribute("lang"), None | Some("en")));
    english
        .or_else(|| children(node, tag).next())
        .map(text_of)
        .unwrap_or_default()
}

fn parse_parameter(
    node: roxmltree::Node<'_, '_>,
    index: usize,
) -> Result<ParameterMeta, MetadataError> {
    let name = node
        .attribute("name")
        .ok_or(MetadataError::ParameterWithoutName { index })?;
    let content = children(node, "content").next();
    let content_type = match content {
        Some(c) => content_type(c),
        None => ContentType::String,
    };
    Ok(ParameterMeta {
        name: name.to_owned(),
        required: is_set(node.attribute("required")),
        unique: is_set(node.attribute("unique")),
        content_type,
        default: content
            .and_then(|c| c.attribute("default"))
            .map(str::to_owned),
        shortdesc: description(node, "shortdesc"),
        longdesc: description(node, "longdesc"),
    })
}

fn content_type(content: roxmltree::Node<'_, '_>) -> ContentType {
    match content.attribute("type").unwrap_or("string") {
        "string" => ContentType::String,
        "integer" => ContentType::Integer,
        "nonnegative_integer" => ContentType::NonNegativeInteger,
        "boolean" => ContentType::Boolean,
        "port" => ContentType::Port,
        "select" => ContentType::Select(
            children(content, "option")
                .filter_map(|o| o.attribute("value"))
                .map(str::to_owned)
                .collect(),
        ),
        other => ContentType::Other(other.to_owned()),
    }
}

fn is_set(flag: Option<&str>) -> bool {
    matches!(flag.map(str::trim), Some("1" | "true" | "yes"))
}

fn parse_action(node: roxmltree::Node<'_, '_>) -> Option<ActionMeta> {
    Some(ActionMeta {
        name: node.attribute("name")?.to_owned(),
        timeout_ms: node.attribute("timeout").and_then(parse_duration_ms),
        interval_ms: node.attribute("interval").and_then(parse_duration_ms),
        depth: node.attribute("depth").and_then(|d| d.trim().parse().ok()),
        role: node.attribute("role").map(str::to_owned),
    })
}

/// An OCF/Pacemaker duration in ms: a whole number with an optional unit
/// (none or `s`/`sec` is seconds; `ms`/`msec`, `us`/`usec`, `m`/`min`,
/// `h`/`hr`). `None` for anything else (ISO 8601 durations included).
pub fn parse_duration_ms(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    if digits_end == 0 {
        return None;
    }
    let number: u64 = text[..digits_end].parse().ok()?;
    let unit = text[digits_end..].trim().to_ascii_lowercase();
    match unit.as_str() {
        "" | "s" | "sec" => number.checked_mul(1000),
        "ms" | "msec" => Some(number),
        "us" | "usec" => Some(number / 1000),
        "m" | "min" => number.checked_mul(60_000),
        "h" | "hr" => number.checked_mul(3_600_000),
        _ => None,
    }
}

/// The checks every parameter map meets before it reaches an agent,
/// whatever the agent: count, name syntax, reserved names, value length,
/// NUL bytes. [`validate_params`] includes them; running an action refuses
/// parameters that fail them.
pub fn check_param_bounds(params: &BTreeMap<String, String>) -> Vec<ParamError> {
    let mut errors = Vec::new();
    if params.len() > PARAMS_MAX {
        errors.push(ParamError::TooMany {
            count: params.len(),
            max: PARAMS_MAX,
        });
    }
    for (name, value) in params {
        if let Some(e) = check_one_bound(name, value) {
            errors.push(e);
        }
    }
    errors
}

fn check_one_bound(name: &str, value: &str) -> Option<ParamError> {
    let name_ok = !name.is_empty()
        && name.len() <= PARAM_NAME_MAX_BYTES
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !name_ok {
        return Some(ParamError::InvalidName { name: name.into() });
    }
    if name.starts_with(RESERVED_PARAM_PREFIX) {
        return Some(ParamError::ReservedName { name: name.into() });
    }
    if value.len() > PARAM_VALUE_MAX_BYTES {
        return Some(ParamError::ValueTooLong {
            name: name.into(),
            bytes: value.len(),
            max: PARAM_VALUE_MAX_BYTES,
        });
    }
    if value.contains('\0') {
        return Some(ParamError::NulInValue { name: name.into() });
    }
    None
}

/// Check `params` against what the agent says it takes: the bounds of
/// [`check_param_bounds`], no parameter the agent does not know, every
/// required one present, and integer, boolean, port and select values
/// well-formed. Returns every problem, not only the first.
pub fn validate_params(
    meta: &AgentMetadata,
    params: &BTreeMap<String, String>,
) -> Result<(), Vec<ParamError>> {
    let mut errors = check_param_bounds(params);
    for (name, value) in params {
        if check_one_bound(name, value).is_some() {
            continue;
        }
        match meta.parameter(name) {
            Some(p) => errors.extend(check_value(p, value)),
            None => errors.push(ParamError::Unknown {
                agent: meta.name.clone(),
                name: name.clone(),
                known: known_names(meta),
            }),
        }
    }
    for p in meta.parameters.iter().filter(|p| p.required) {
        if !params.contains_key(&p.name) {
            errors.push(ParamError::MissingRequired {
                agent: meta.name.clone(),
                name: p.name.clone(),
                shortdesc: p.shortdesc.clone(),
                longdesc: p.longdesc.clone(),
            });
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn known_names(meta: &AgentMetadata) -> String {
    if meta.parameters.is_empty() {
        return "(none: this agent takes no parameters)".to_owned();
    }
    let names: Vec<&str> = meta.parameters.iter().map(|p| p.name.as_str()).collect();
    names.join(", ")
}

fn check_value(param: &ParameterMeta, value: &str) -> Option<ParamError> {
    let wrong = |expected: &'static str, hint: String| ParamError::WrongType {
        name: param.name.clone(),
        value: value.to_owned(),
        expected,
        hint,
    };
    match &param.content_type {
        ContentType::Integer if value.trim().parse::<i64>().is_err() => Some(wrong(
            "an integer",
            "a whole number such as 30 or -1".into(),
        )),
        ContentType::NonNegativeInteger if value.trim().parse::<u64>().is_err() => Some(wrong(
            "a non-negative integer",
            "a whole number such as 0 or 30".into(),
        )),
        ContentType::Port if value.trim().parse::<u16>().is_err() => {
            Some(wrong("a port", "a number from 0 to 65535".into()))
        }
        ContentType::Boolean
            if !BOOLEAN_TRUE.contains(&value) && !BOOLEAN_FALSE.contains(&value) =>
        {
            Some(wrong(
                "a boolean the agent understands",
                format!(
                    "one of {} (true) or {} (false); agents read any other spelling as false",
                    BOOLEAN_TRUE.join(", "),
                    BOOLEAN_FALSE.join(", ")
                ),
            ))
        }
        ContentType::Select(options)
            if !options.is_empty() && !options.iter().any(|o| o == value) =>
        {
            Some(wrong(
                "one of the agent's options",
                format!("one of: {}", options.join(", ")),
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"<?xml version="1.0"?>
<!DOCTYPE resource-agent SYSTEM "ra-api-1.dtd">
<resource-agent name="Sample" version="2.3">
<version>1.1</version>
<longdesc lang="de">Beispiel</longdesc>
<longdesc lang="en">
  A sample agent.
</longdesc>
<shortdesc lang="en">Sample</shortdesc>
<parameters>
<parameter name="ip" unique="1" required="1">
<longdesc lang="en">The address to hold, in dotted quad notation.</longdesc>
<shortdesc lang="en">IPv4 address</shortdesc>
<content type="string" />
</parameter>
<parameter name="count">
<shortdesc lang="en">Count</shortdesc>
<content type="integer" default="3" />
</parameter>
<parameter name="flag">
<content type="boolean" default="false" />
</parameter>
<parameter name="mode">
<content type="select" default="fast"><option value="fast" /><option value="safe" /></content>
</parameter>
</parameters>
<actions>
<action name="start" timeout="20s" />
<action name="stop" timeout="2min" />
<action name="monitor" timeout="20" interval="10s" depth="0" />
<action name="monitor" timeout="20s" interval="9s" role="Promoted" />
<action name="promote" timeout="1500ms" />
<action name="demote" timeout="20s" />
<action name="meta-data" timeout="5s" />
</actions>
</resource-agent>
"#;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn metadata_with_a_doctype_parses_into_parameters_and_actions() {
        let meta = parse_metadata(SAMPLE).unwrap();
        assert_eq!(meta.name, "Sample");
        assert_eq!(meta.version.as_deref(), Some("2.3"));
        assert_eq!(meta.ocf_version.as_deref(), Some("1.1"));
        assert_eq!(meta.longdesc, "A sample agent.");
        assert_eq!(meta.shortdesc, "Sample");
        let ip = meta.parameter("ip").unwrap();
        assert!(ip.required && ip.unique);
        assert_eq!(ip.shortdesc, "IPv4 address");
        assert_eq!(
            meta.parameter("count").unwrap().default.as_deref(),
            Some("3")
        );
        assert_eq!(
            meta.parameter("mode").unwrap().content_type,
            ContentType::Select(vec!["fast".into(), "safe".into()])
        );
        let monitor = meta.action("monitor").unwrap();
        assert_eq!(
            (monitor.timeout_ms, monitor.interval_ms, monitor.depth),
            (Some(20_000), Some(10_000), Some(0))
        );
        assert_eq!(meta.action("stop").unwrap().timeout_ms, Some(120_000));
        assert_eq!(meta.action("promote").unwrap().timeout_ms, Some(1_500));
        assert_eq!(meta.actions[3].role.as_deref(), Some("Promoted"));
        assert!(meta.promotable);
    }

    #[test]
    fn metadata_that_is_not_a_resource_agent_is_refused() {
        assert!(matches!(
            parse_metadata("<html/>"),
            Err(MetadataError::NotResourceAgent { .. })
        ));
        assert!(matches!(
            parse_metadata("usage: foo"),
            Err(MetadataError::Xml(_))
        ));
        assert!(matches!(
            parse_metadata("<resource-agent/>"),
            Err(MetadataError::MissingName)
        ));
    }

    #[test]
    fn metadata_over_the_bound_is_refused_before_parsing() {
        let huge = format!(
            "<resource-agent name=\"x\">{}</resource-agent>",
            " ".repeat(METADATA_MAX_BYTES)
        );
        assert!(matches!(
            parse_metadata(&huge),
            Err(MetadataError::TooLarge { .. })
        ));
    }

    #[test]
    fn durations_take_ocf_units_and_refuse_the_rest() {
        assert_eq!(parse_duration_ms("20"), Some(20_000));
        assert_eq!(parse_duration_ms("20s"), Some(20_000));
        assert_eq!(parse_duration_ms("250ms"), Some(250));
        assert_eq!(parse_duration_ms("2min"), Some(120_000));
        assert_eq!(parse_duration_ms("1h"), Some(3_600_000));
        assert_eq!(parse_duration_ms("PT20S"), None);
        assert_eq!(parse_duration_ms("s"), None);
        assert_eq!(parse_duration_ms("20 fortnights"), None);
    }

    #[test]
    fn valid_params_pass() {
        let meta = parse_metadata(SAMPLE).unwrap();
        let given = params(&[
            ("ip", "10.0.0.1"),
            ("count", "-2"),
            ("flag", "yes"),
            ("mode", "safe"),
        ]);
        assert_eq!(validate_params(&meta, &given), Ok(()));
    }

    #[test]
    fn an_unknown_param_is_refused_listing_the_known_ones() {
        let meta = parse_metadata(SAMPLE).unwrap();
        let errors =
            validate_params(&meta, &params(&[("ip", "10.0.0.1"), ("ipp", "x")])).unwrap_err();
        assert_eq!(errors.len(), 1);
        let text = errors[0].to_string();
        assert!(
            text.contains("\"ipp\"") && text.contains("ip, count, flag, mode"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_required_param_is_refused_with_the_agents_description() {
        let meta = parse_metadata(SAMPLE).unwrap();
        let errors = validate_params(&meta, &BTreeMap::new()).unwrap_err();
        let text = errors[0].to_string();
        assert!(
            text.contains("requires parameter \"ip\" (IPv4 address)"),
            "{text}"
        );
        assert!(text.contains("in dotted quad notation"), "{text}");
    }

    #[test]
    fn integers_booleans_and_selects_are_type_checked() {
        let meta = parse_metadata(SAMPLE).unwrap();
        let given = params(&[
            ("ip", "a"),
            ("count", "three"),
            ("flag", "Yes"),
            ("mode", "slow"),
        ]);
        let errors = validate_params(&meta, &given).unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors
            .iter()
            .all(|e| matches!(e, ParamError::WrongType { .. })));
        assert!(errors[1]
            .to_string()
            .contains("agents read any other spelling as false"));
    }

    #[test]
    fn bounds_refuse_bad_names_reserved_names_long_values_and_too_many() {
        let long = "x".repeat(PARAM_VALUE_MAX_BYTES + 1);
        let given = params(&[
            ("a-b", "1"),
            ("CRM_meta_timeout", "1"),
            ("v", &long),
            ("n", "a\0b"),
        ]);
        let errors = check_param_bounds(&given);
        assert!(
            matches!(errors[0], ParamError::ReservedName { .. }),
            "{errors:?}"
        );
        assert!(matches!(errors[1], ParamError::InvalidName { .. }));
        assert!(matches!(errors[2], ParamError::NulInValue { .. }));
        assert!(matches!(errors[3], ParamError::ValueTooLong { .. }));
        let many: BTreeMap<String, String> = (0..=PARAMS_MAX)
            .map(|i| (format!("p{i}"), String::new()))
            .collect();
        assert!(matches!(
            check_param_bounds(&many)[0],
            ParamError::TooMany { .. }
        ));
    }
}
