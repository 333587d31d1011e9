//! The console's scripts and style sheet, embedded in the binary and served under names that
//! carry a hash of their content, so browsers may keep them for a year and a new release is
//! fetched at once.

use std::{fmt::Write as _, sync::LazyLock};

use actix_web::{HttpResponse, http::header, web};

struct Asset {
    /// `console.css`.
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "console.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/console.css"),
    },
    Asset {
        name: "console.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/console.js"),
    },
    Asset {
        name: "playground.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/playground.js"),
    },
];

/// Each asset's served name: `console.3f2a9c01d4e5.css`.
static HASHED: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| {
            let digest = ring::digest::digest(&ring::digest::SHA256, asset.body);
            let mut hash = String::new();
            for b in &digest.as_ref()[..6] {
                let _ = write!(hash, "{b:02x}");
            }
            let (stem, ext) = asset
                .name
                .rsplit_once('.')
                .expect("a name with an extension");
            format!("{stem}.{hash}.{ext}")
        })
        .collect()
});

/// The URL of an asset by its plain name (`console.js`).
pub fn url(name: &str) -> String {
    let index = ASSETS
        .iter()
        .position(|a| a.name == name)
        .expect("an embedded asset");
    format!("/console/assets/{}", HASHED[index])
}

/// `GET /console/assets/{name}`: only the current hashed names exist.
pub async fn serve(name: web::Path<String>) -> HttpResponse {
    match HASHED.iter().position(|h| *h == *name) {
        Some(index) => HttpResponse::Ok()
            .content_type(ASSETS[index].content_type)
            .insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"))
            .body(ASSETS[index].body),
        None => http_problem::Problem::not_found().to_response(),
    }
}
