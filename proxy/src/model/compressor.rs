//! `envoy.filters.http.compressor` (`envoy.extensions.filters.http.compressor.v3.Compressor`)
//! with the gzip, brotli and zstd compressor libraries → the filter's settings.

use super::core::{any_type, decode_any, deny, enum_value, u32_or};
use super::pb;
use super::runtime::Runtime;
use crate::config::{FieldPath, Result};

pub const COMPRESSOR_TYPE: &str = "envoy.extensions.filters.http.compressor.v3.Compressor";
const GZIP_TYPE: &str = "envoy.extensions.compression.gzip.compressor.v3.Gzip";
const BROTLI_TYPE: &str = "envoy.extensions.compression.brotli.compressor.v3.Brotli";
const ZSTD_TYPE: &str = "envoy.extensions.compression.zstd.compressor.v3.Zstd";

/// Envoy's default compressible media types.
const DEFAULT_CONTENT_TYPES: &[&str] = &[
    "application/javascript",
    "application/json",
    "application/xhtml+xml",
    "image/svg+xml",
    "text/css",
    "text/html",
    "text/plain",
    "text/xml",
];

#[derive(Debug, Clone, PartialEq)]
pub struct CompressorConfig {
    /// `compressor_library.name` (the stats scope).
    pub library_name: String,
    pub library: Library,
    /// Response compression; None when disabled.
    pub response: Option<ResponseConfig>,
    /// Stats carry the `response.` direction scope (only when `response_direction_config`
    /// is configured, as Envoy).
    pub direction_in_stats: bool,
    pub choose_first: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ResponseConfig {
    pub min_content_length: u64,
    /// Lower-case media types without parameters.
    pub content_types: Vec<String>,
    pub disable_on_etag_header: bool,
    pub weaken_etag_on_compress: bool,
    pub remove_accept_encoding_header: bool,
    pub uncompressible_response_codes: Vec<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Library {
    /// zlib level 0-9, window bits 9-15.
    Gzip {
        level: u32,
        window_bits: u8,
        chunk_size: usize,
    },
    Brotli {
        quality: u32,
        window_bits: u32,
        input_block_bits: u32,
        mode: BrotliMode,
        disable_literal_context_modeling: bool,
        chunk_size: usize,
    },
    Zstd {
        level: i32,
        checksum: bool,
        /// 0 = zstd's default; 1..=9 as `ZSTD_strategy`.
        strategy: u32,
        chunk_size: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrotliMode {
    Generic,
    Text,
    Font,
}

impl Library {
    /// The `content-encoding` token.
    pub fn encoding(&self) -> &'static str {
        match self {
            Library::Gzip { .. } => "gzip",
            Library::Brotli { .. } => "br",
            Library::Zstd { .. } => "zstd",
        }
    }

    /// The library's stats scope.
    pub fn stat_prefix(&self) -> &'static str {
        match self {
            Library::Gzip { .. } => "gzip",
            Library::Brotli { .. } => "brotli",
            Library::Zstd { .. } => "zstd",
        }
    }

    pub fn chunk_size(&self) -> usize {
        match *self {
            Library::Gzip { chunk_size, .. }
            | Library::Brotli { chunk_size, .. }
            | Library::Zstd { chunk_size, .. } => chunk_size,
        }
    }
}

/// A `RuntimeFeatureFlag`: the runtime key's value when the runtime has one, else the default.
fn feature_flag(
    path: &FieldPath,
    f: &Option<pb::core::RuntimeFeatureFlag>,
    rt: &Runtime,
) -> Result<bool> {
    let Some(pb::core::RuntimeFeatureFlag {
        default_value,
        runtime_key,
    }) = f
    else {
        return Ok(true);
    };
    let Some(default) = default_value else {
        return Err(path.field("default_value").error("is required"));
    };
    Ok(match rt.values.get(runtime_key) {
        Some(serde_json::Value::Bool(b)) => *b,
        Some(serde_json::Value::String(s)) if s == "true" || s == "false" => s == "true",
        _ => default.value,
    })
}

fn chunk_size(path: &FieldPath, v: &Option<pb::protobuf::UInt32Value>) -> Result<usize> {
    let c = u32_or(v, 4096);
    if !(4096..=65536).contains(&c) {
        return Err(path
            .field("chunk_size")
            .error("must be between 4096 and 65536"));
    }
    Ok(c as usize)
}

impl CompressorConfig {
    pub fn from_proto(
        path: &FieldPath,
        c: &pb::compressor::Compressor,
        rt: &Runtime,
    ) -> Result<Self> {
        let pb::compressor::Compressor {
            content_length,
            content_type,
            disable_on_etag_header,
            remove_accept_encoding_header,
            runtime_enabled,
            compressor_library,
            request_direction_config,
            response_direction_config,
            choose_first,
        } = c;
        let Some(lib) = compressor_library else {
            return Err(path.field("compressor_library").error("is required"));
        };
        let lp = path.field("compressor_library");
        let Some(any) = &lib.typed_config else {
            return Err(lp.field("typed_config").error("is required"));
        };
        let library = library(&lp.field("typed_config"), any)?;

        if let Some(req) = request_direction_config {
            let rp = path.field("request_direction_config");
            let common = req.common_config.clone().unwrap_or_default();
            if feature_flag(
                &rp.field("common_config").field("enabled"),
                &common.enabled,
                rt,
            )? {
                return Err(rp.error("request compression is not supported by remora"));
            }
        }

        // The deprecated top-level fields configure the response direction when
        // `response_direction_config` is absent.
        let response = match response_direction_config {
            Some(r) => {
                let rp = path.field("response_direction_config");
                for (name, set) in [
                    ("content_length", content_length.is_some()),
                    ("content_type", !content_type.is_empty()),
                    ("disable_on_etag_header", *disable_on_etag_header),
                    (
                        "remove_accept_encoding_header",
                        *remove_accept_encoding_header,
                    ),
                    ("runtime_enabled", runtime_enabled.is_some()),
                ] {
                    if set {
                        return Err(path.field(name).error(
                            "deprecated; cannot be combined with response_direction_config",
                        ));
                    }
                }
                let pb::compressor::compressor::ResponseDirectionConfig {
                    common_config,
                    disable_on_etag_header,
                    weaken_etag_on_compress,
                    remove_accept_encoding_header,
                    uncompressible_response_codes,
                    status_header_enabled,
                } = r;
                deny(&rp, "status_header_enabled", status_header_enabled)?;
                let common = common_config.clone().unwrap_or_default();
                let cp = rp.field("common_config");
                let pb::compressor::compressor::CommonDirectionConfig {
                    enabled,
                    min_content_length,
                    content_type,
                    content_type_matcher,
                } = &common;
                deny(&cp, "content_type_matcher", content_type_matcher)?;
                let mut codes = Vec::new();
                for (i, code) in uncompressible_response_codes.iter().enumerate() {
                    if !(100..=599).contains(code) {
                        return Err(rp
                            .field("uncompressible_response_codes")
                            .index(i)
                            .error("must be an HTTP status code (100-599)"));
                    }
                    codes.push(*code as u16);
                }
                feature_flag(&cp.field("enabled"), enabled, rt)?.then(|| ResponseConfig {
                    min_content_length: u64::from(u32_or(min_content_length, 30)),
                    content_types: content_types(content_type),
                    disable_on_etag_header: *disable_on_etag_header,
                    weaken_etag_on_compress: *weaken_etag_on_compress,
                    remove_accept_encoding_header: *remove_accept_encoding_header,
                    uncompressible_response_codes: codes,
                })
            }
            None => feature_flag(&path.field("runtime_enabled"), runtime_enabled, rt)?.then(|| {
                ResponseConfig {
                    min_content_length: u64::from(u32_or(content_length, 30)),
                    content_types: content_types(content_type),
                    disable_on_etag_header: *disable_on_etag_header,
                    weaken_etag_on_compress: false,
                    remove_accept_encoding_header: *remove_accept_encoding_header,
                    uncompressible_response_codes: Vec::new(),
                }
            }),
        };
        Ok(Self {
            library_name: lib.name.clone(),
            library,
            response,
            direction_in_stats: response_direction_config.is_some(),
            choose_first: *choose_first,
        })
    }
}

fn content_types(configured: &[String]) -> Vec<String> {
    if configured.is_empty() {
        DEFAULT_CONTENT_TYPES
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        configured
            .iter()
            .map(|s| {
                s.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .collect()
    }
}

fn library(path: &FieldPath, any: &pb::protobuf::Any) -> Result<Library> {
    match any_type(any) {
        GZIP_TYPE => {
            use pb::gzip::gzip::{CompressionLevel, CompressionStrategy};
            let pb::gzip::Gzip {
                memory_level,
                compression_level,
                compression_strategy,
                window_bits,
                chunk_size: chunk,
            } = decode_any(path, any)?;
            let level = match enum_value::<CompressionLevel>(
                path,
                "compression_level",
                compression_level,
                |_| true,
            )? {
                CompressionLevel::DefaultCompression => 6,
                other => other as u32,
            };
            enum_value::<CompressionStrategy>(
                path,
                "compression_strategy",
                compression_strategy,
                |s| *s == CompressionStrategy::DefaultStrategy,
            )?;
            // zlib's memory level trades memory for speed; remora's deflate (zlib-rs) runs
            // at one level, which the default stands for.
            if memory_level.as_ref().is_some_and(|m| m.value != 5) {
                return Err(path
                    .field("memory_level")
                    .error("only the default (5) is supported"));
            }
            let window_bits = u32_or(&window_bits, 12);
            if !(9..=15).contains(&window_bits) {
                return Err(path.field("window_bits").error("must be between 9 and 15"));
            }
            Ok(Library::Gzip {
                level,
                window_bits: window_bits as u8,
                chunk_size: chunk_size(path, &chunk)?,
            })
        }
        BROTLI_TYPE => {
            use pb::brotli::brotli::EncoderMode;
            let pb::brotli::Brotli {
                quality,
                encoder_mode,
                window_bits,
                input_block_bits,
                chunk_size: chunk,
                disable_literal_context_modeling,
            } = decode_any(path, any)?;
            let quality = u32_or(&quality, 3);
            if quality > 11 {
                return Err(path.field("quality").error("must be between 0 and 11"));
            }
            let window_bits = u32_or(&window_bits, 18);
            if !(10..=24).contains(&window_bits) {
                return Err(path.field("window_bits").error("must be between 10 and 24"));
            }
            let input_block_bits = u32_or(&input_block_bits, 24);
            if !(16..=24).contains(&input_block_bits) {
                return Err(path
                    .field("input_block_bits")
                    .error("must be between 16 and 24"));
            }
            let mode =
                match enum_value::<EncoderMode>(path, "encoder_mode", encoder_mode, |_| true)? {
                    EncoderMode::Default | EncoderMode::Generic => BrotliMode::Generic,
                    EncoderMode::Text => BrotliMode::Text,
                    EncoderMode::Font => BrotliMode::Font,
                };
            Ok(Library::Brotli {
                quality,
                window_bits,
                input_block_bits,
                mode,
                disable_literal_context_modeling,
                chunk_size: chunk_size(path, &chunk)?,
            })
        }
        ZSTD_TYPE => {
            let pb::zstd::Zstd {
                compression_level,
                enable_checksum,
                strategy,
                dictionary,
                chunk_size: chunk,
            } = decode_any(path, any)?;
            deny(path, "dictionary", &dictionary)?;
            if !(0..=9).contains(&strategy) {
                return Err(path.field("strategy").error("unknown strategy"));
            }
            let level = u32_or(&compression_level, 3);
            if level > 22 {
                return Err(path
                    .field("compression_level")
                    .error("must be between 1 and 22"));
            }
            Ok(Library::Zstd {
                level: level as i32,
                checksum: enable_checksum,
                strategy: strategy as u32,
                chunk_size: chunk_size(path, &chunk)?,
            })
        }
        other => Err(path
            .field("@type")
            .error(format!("compressor library {other} is not supported"))),
    }
}
