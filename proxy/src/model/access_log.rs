//! Access-log configuration: `envoy.access_loggers.file`, `.stdout`, `.stderr`, with Envoy's
//! default format, text formats, `json_format`, and access-log filters. The same filters select
//! local-reply mappers in the HTTP connection manager.

use super::core::{any_type, decode_any, deny, enum_value};
use super::format::{DEFAULT_ACCESS_LOG_FORMAT, Formatter};
use super::inputs::Inputs;
use super::matcher::HeaderMatcher;
use super::pb;
use super::response_flags::ResponseFlags;
use super::runtime::Runtime;
use crate::config::{FieldPath, Result};
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct AccessLogConfig {
    pub name: String,
    pub filter: Option<LogFilter>,
    pub sink: Sink,
    pub format: LogFormat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    File(PathBuf),
    Stdout,
    Stderr,
}

#[derive(Debug, Clone)]
pub enum LogFormat {
    Text(Formatter),
    Json {
        fields: Vec<(String, JsonField)>,
        omit_empty_values: bool,
        typed: bool,
    },
}

#[derive(Debug, Clone)]
pub enum JsonField {
    Format(Formatter),
    Nested(Vec<(String, JsonField)>),
    Literal(serde_json::Value),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ge,
    Le,
    Ne,
}

#[derive(Debug, Clone)]
pub enum LogFilter {
    StatusCode(CompareOp, u64),
    Duration(CompareOp, u64),
    NotHealthCheck,
    And(Vec<LogFilter>),
    Or(Vec<LogFilter>),
    Header(HeaderMatcher),
    /// Empty: any flag.
    ResponseFlag(ResponseFlags),
}

/// The parts of a finished stream a log filter reads.
pub struct FilterInput<'a> {
    pub response_code: u16,
    pub duration_ms: u64,
    pub response_flags: ResponseFlags,
    pub health_check: bool,
    pub request: Option<&'a super::matcher::RequestHeaders<'a>>,
}

// === impl LogFilter ===

impl LogFilter {
    pub fn from_proto(
        path: &FieldPath,
        f: &pb::accesslog::AccessLogFilter,
        rt: &Runtime,
    ) -> Result<Self> {
        use pb::accesslog::access_log_filter::FilterSpecifier as F;
        let pb::accesslog::AccessLogFilter { filter_specifier } = f;
        Ok(match filter_specifier {
            Some(F::StatusCodeFilter(s)) => {
                let (op, v) = comparison(&path.field("status_code_filter"), &s.comparison, rt)?;
                LogFilter::StatusCode(op, v)
            }
            Some(F::DurationFilter(d)) => {
                let (op, v) = comparison(&path.field("duration_filter"), &d.comparison, rt)?;
                LogFilter::Duration(op, v)
            }
            Some(F::NotHealthCheckFilter(_)) => LogFilter::NotHealthCheck,
            Some(F::AndFilter(a)) => {
                LogFilter::And(list(&path.field("and_filter"), &a.filters, rt)?)
            }
            Some(F::OrFilter(o)) => LogFilter::Or(list(&path.field("or_filter"), &o.filters, rt)?),
            Some(F::HeaderFilter(h)) => {
                let hp = path.field("header_filter");
                let header = h
                    .header
                    .as_ref()
                    .ok_or_else(|| hp.field("header").error("is required"))?;
                LogFilter::Header(HeaderMatcher::from_proto(&hp.field("header"), header)?)
            }
            Some(F::ResponseFlagFilter(r)) => {
                let mut flags = ResponseFlags::empty();
                for (i, name) in r.flags.iter().enumerate() {
                    flags |= ResponseFlags::from_short(name).ok_or_else(|| {
                        path.field("response_flag_filter")
                            .field("flags")
                            .index(i)
                            .error(format!("unknown response flag '{name}'"))
                    })?;
                }
                LogFilter::ResponseFlag(flags)
            }
            Some(F::TraceableFilter(_)) => return Err(path.unsupported("traceable_filter")),
            Some(F::RuntimeFilter(_)) => return Err(path.unsupported("runtime_filter")),
            Some(F::GrpcStatusFilter(_)) => return Err(path.unsupported("grpc_status_filter")),
            Some(F::ExtensionFilter(_)) => return Err(path.unsupported("extension_filter")),
            Some(F::MetadataFilter(_)) => return Err(path.unsupported("metadata_filter")),
            Some(F::LogTypeFilter(_)) => return Err(path.unsupported("log_type_filter")),
            None => return Err(path.error("an access log filter needs a filter type")),
        })
    }

    /// Request headers the filter reads.
    pub fn request_headers(&self, out: &mut Vec<http::HeaderName>) {
        match self {
            LogFilter::Header(h) => {
                if let super::matcher::HeaderKey::Named(n) = &h.key {
                    out.push(n.clone());
                }
            }
            LogFilter::And(fs) | LogFilter::Or(fs) => {
                fs.iter().for_each(|f| f.request_headers(out))
            }
            _ => {}
        }
    }

    pub fn evaluate(&self, i: &FilterInput<'_>) -> bool {
        match self {
            LogFilter::StatusCode(op, v) => compare(*op, i.response_code as u64, *v),
            LogFilter::Duration(op, v) => compare(*op, i.duration_ms, *v),
            LogFilter::NotHealthCheck => !i.health_check,
            LogFilter::And(fs) => fs.iter().all(|f| f.evaluate(i)),
            LogFilter::Or(fs) => fs.iter().any(|f| f.evaluate(i)),
            LogFilter::Header(h) => i.request.is_some_and(|r| h.matches(r)),
            LogFilter::ResponseFlag(flags) => {
                if flags.is_empty() {
                    !i.response_flags.is_empty()
                } else {
                    i.response_flags.intersects(*flags)
                }
            }
        }
    }
}

fn compare(op: CompareOp, actual: u64, v: u64) -> bool {
    match op {
        CompareOp::Eq => actual == v,
        CompareOp::Ge => actual >= v,
        CompareOp::Le => actual <= v,
        CompareOp::Ne => actual != v,
    }
}

fn list(
    path: &FieldPath,
    fs: &[pb::accesslog::AccessLogFilter],
    rt: &Runtime,
) -> Result<Vec<LogFilter>> {
    if fs.len() < 2 {
        return Err(path.field("filters").error("needs at least two filters"));
    }
    fs.iter()
        .enumerate()
        .map(|(i, f)| LogFilter::from_proto(&path.field("filters").index(i), f, rt))
        .collect()
}

fn comparison(
    path: &FieldPath,
    c: &Option<pb::accesslog::ComparisonFilter>,
    rt: &Runtime,
) -> Result<(CompareOp, u64)> {
    use pb::accesslog::comparison_filter::Op;
    let c = c
        .as_ref()
        .ok_or_else(|| path.field("comparison").error("is required"))?;
    let cp = path.field("comparison");
    let pb::accesslog::ComparisonFilter { op, value } = c;
    let op = match enum_value::<Op>(&cp, "op", *op, |_| true)? {
        Op::Eq => CompareOp::Eq,
        Op::Ge => CompareOp::Ge,
        Op::Le => CompareOp::Le,
        Op::Ne => CompareOp::Ne,
    };
    let value = value
        .as_ref()
        .ok_or_else(|| cp.field("value").error("is required"))?;
    let pb::core::RuntimeUInt32 {
        default_value,
        runtime_key,
    } = value;
    // The runtime is static in remora: a key defined in the bootstrap's runtime wins, as in Envoy.
    let v = rt.u64(runtime_key).unwrap_or(*default_value as u64);
    Ok((op, v))
}

// === impl AccessLogConfig ===

pub const FILE_LOGGER: &str = "envoy.extensions.access_loggers.file.v3.FileAccessLog";
pub const STDOUT_LOGGER: &str = "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
pub const STDERR_LOGGER: &str = "envoy.extensions.access_loggers.stream.v3.StderrAccessLog";

impl AccessLogConfig {
    pub fn from_proto(
        path: &FieldPath,
        al: &pb::accesslog::AccessLog,
        rt: &Runtime,
        inputs: &Inputs,
    ) -> Result<Self> {
        use pb::accesslog::access_log::ConfigType;
        let pb::accesslog::AccessLog {
            name,
            filter,
            config_type,
        } = al;
        let filter = filter
            .as_ref()
            .map(|f| LogFilter::from_proto(&path.field("filter"), f, rt))
            .transpose()?;
        let tp = path.field("typed_config");
        let Some(ConfigType::TypedConfig(any)) = config_type else {
            return Err(path.error("an access log needs typed_config"));
        };
        let (sink, format) = match any_type(any) {
            FILE_LOGGER => {
                use pb::file_log::file_access_log::AccessLogFormat as F;
                let pb::file_log::FileAccessLog {
                    path: file,
                    access_log_format,
                } = decode_any(&tp, any)?;
                if file.is_empty() {
                    return Err(tp.field("path").error("must not be empty"));
                }
                let format = match &access_log_format {
                    None => LogFormat::Text(
                        Formatter::parse(DEFAULT_ACCESS_LOG_FORMAT).expect("default format"),
                    ),
                    Some(F::Format(f)) => LogFormat::Text(text(
                        &tp.field("format"),
                        if f.is_empty() {
                            DEFAULT_ACCESS_LOG_FORMAT
                        } else {
                            f
                        },
                        inputs,
                    )?),
                    // Envoy turns the deprecated json_format into a SubstitutionFormatString's
                    // json_format: its values are typed too.
                    Some(F::JsonFormat(s)) => LogFormat::Json {
                        fields: json_fields(&tp.field("json_format"), s, inputs)?,
                        omit_empty_values: false,
                        typed: true,
                    },
                    Some(F::TypedJsonFormat(s)) => LogFormat::Json {
                        fields: json_fields(&tp.field("typed_json_format"), s, inputs)?,
                        omit_empty_values: false,
                        typed: true,
                    },
                    Some(F::LogFormat(sfs)) => {
                        substitution_format(&tp.field("log_format"), sfs, inputs)?
                    }
                };
                let sink = if file == "/dev/stdout" {
                    Sink::Stdout
                } else if file == "/dev/stderr" {
                    Sink::Stderr
                } else {
                    Sink::File(PathBuf::from(file))
                };
                (sink, format)
            }
            STDOUT_LOGGER => {
                let pb::stream_log::StdoutAccessLog { access_log_format } = decode_any(&tp, any)?;
                let format = match access_log_format {
                    Some(pb::stream_log::stdout_access_log::AccessLogFormat::LogFormat(sfs)) => {
                        substitution_format(&tp.field("log_format"), &sfs, inputs)?
                    }
                    None => LogFormat::Text(
                        Formatter::parse(DEFAULT_ACCESS_LOG_FORMAT).expect("default format"),
                    ),
                };
                (Sink::Stdout, format)
            }
            STDERR_LOGGER => {
                let pb::stream_log::StderrAccessLog { access_log_format } = decode_any(&tp, any)?;
                let format = match access_log_format {
                    Some(pb::stream_log::stderr_access_log::AccessLogFormat::LogFormat(sfs)) => {
                        substitution_format(&tp.field("log_format"), &sfs, inputs)?
                    }
                    None => LogFormat::Text(
                        Formatter::parse(DEFAULT_ACCESS_LOG_FORMAT).expect("default format"),
                    ),
                };
                (Sink::Stderr, format)
            }
            other => {
                return Err(tp
                    .field("@type")
                    .error(format!("access logger {other} is not supported")));
            }
        };
        Ok(Self {
            name: name.clone(),
            filter,
            sink,
            format,
        })
    }

    /// Response headers the format reads.
    pub fn response_headers(&self) -> Vec<http::HeaderName> {
        fn collect(fields: &[(String, JsonField)], out: &mut Vec<http::HeaderName>) {
            for (_, f) in fields {
                match f {
                    JsonField::Format(fm) => out.extend(fm.response_headers()),
                    JsonField::Nested(n) => collect(n, out),
                    JsonField::Literal(_) => {}
                }
            }
        }
        let mut out = Vec::new();
        match &self.format {
            LogFormat::Text(f) => out.extend(f.response_headers()),
            LogFormat::Json { fields, .. } => collect(fields, &mut out),
        }
        out
    }

    /// Request headers the format and the filter read.
    pub fn request_headers(&self) -> Vec<http::HeaderName> {
        let mut out = Vec::new();
        fn collect(fields: &[(String, JsonField)], out: &mut Vec<http::HeaderName>) {
            for (_, f) in fields {
                match f {
                    JsonField::Format(fm) => out.extend(fm.request_headers()),
                    JsonField::Nested(n) => collect(n, out),
                    JsonField::Literal(_) => {}
                }
            }
        }
        match &self.format {
            LogFormat::Text(f) => out.extend(f.request_headers()),
            LogFormat::Json { fields, .. } => collect(fields, &mut out),
        }
        if let Some(f) = &self.filter {
            f.request_headers(&mut out);
        }
        out
    }
}

fn text(path: &FieldPath, s: &str, inputs: &Inputs) -> Result<Formatter> {
    Formatter::parse_in(s, inputs).map_err(|e| path.error(e))
}

/// `SubstitutionFormatString` → a log format (also used by local replies).
pub fn substitution_format(
    path: &FieldPath,
    s: &pb::core::SubstitutionFormatString,
    inputs: &Inputs,
) -> Result<LogFormat> {
    use pb::core::substitution_format_string::Format as F;
    let pb::core::SubstitutionFormatString {
        omit_empty_values,
        content_type,
        formatters,
        json_format_options,
        format,
    } = s;
    let _ = content_type; // read by local replies (`local_reply_content_type`); logs ignore it as Envoy does
    deny(path, "formatters", formatters)?;
    let _ = json_format_options; // sort_properties: remora always sorts, as Envoy now does
    Ok(match format {
        Some(F::TextFormat(t)) => LogFormat::Text(text(&path.field("text_format"), t, inputs)?),
        Some(F::TextFormatSource(ds)) => {
            let bytes = super::core::data_source(&path.field("text_format_source"), ds, inputs)?;
            let t = String::from_utf8(bytes.to_vec())
                .map_err(|_| path.field("text_format_source").error("must be UTF-8"))?;
            LogFormat::Text(text(&path.field("text_format_source"), &t, inputs)?)
        }
        Some(F::JsonFormat(st)) => LogFormat::Json {
            fields: json_fields(&path.field("json_format"), st, inputs)?,
            omit_empty_values: *omit_empty_values,
            typed: true,
        },
        None => {
            return Err(
                path.error("one of text_format, json_format or text_format_source is required")
            );
        }
    })
}

/// The content type a `SubstitutionFormatString` declares, if any.
pub fn content_type(s: &pb::core::SubstitutionFormatString) -> Option<String> {
    (!s.content_type.is_empty()).then(|| s.content_type.clone())
}

fn json_fields(
    path: &FieldPath,
    s: &pb::protobuf::Struct,
    inputs: &Inputs,
) -> Result<Vec<(String, JsonField)>> {
    use pb::protobuf::value::Kind;
    let mut out = Vec::with_capacity(s.fields.len());
    for (k, v) in &s.fields {
        let p = path.key(k);
        let field = match &v.kind {
            Some(Kind::StringValue(f)) => JsonField::Format(text(&p, f, inputs)?),
            Some(Kind::StructValue(inner)) => JsonField::Nested(json_fields(&p, inner, inputs)?),
            Some(Kind::NumberValue(_)) | Some(Kind::BoolValue(_)) | Some(Kind::NullValue(_)) => {
                JsonField::Literal(super::runtime::value_to_json(v))
            }
            Some(Kind::ListValue(_)) => {
                return Err(p.error("lists are not supported in json_format"));
            }
            None => JsonField::Literal(serde_json::Value::Null),
        };
        out.push((k.clone(), field));
    }
    // Envoy sorts JSON log properties.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
