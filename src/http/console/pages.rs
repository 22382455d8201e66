//! The pages themselves, compiled into the binary: the console (`/console`, admin
//! listener) and the watch page (`/watch`, client listener). Plain HTML, CSS and
//! JavaScript modules from `src/http/pages/`, no build step, nothing loaded from elsewhere.
//!
//! The files hold no data and no secret: the console fetches everything from the admin
//! API with the token its operator types in, and the watch page speaks the client
//! protocol over `/ws` with a login token. Every file goes out with a content security
//! policy that lets it load only from its own origin, and with no referrer, so a token in
//! the watch page's address does not leak to another site.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// A file served as is.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

/// The console's files, under `/console/`.
const CONSOLE: &[Asset] = &[
    Asset { name: "console.js", content_type: JS, body: include_str!("../pages/console.js") },
    Asset { name: "api.js", content_type: JS, body: include_str!("../pages/api.js") },
    Asset { name: "charts.js", content_type: JS, body: include_str!("../pages/charts.js") },
    Asset { name: "render.js", content_type: JS, body: include_str!("../pages/render.js") },
    Asset { name: "style.css", content_type: CSS, body: include_str!("../pages/style.css") },
];

/// The watch page's files, under `/watch/`.
const WATCH: &[Asset] = &[
    Asset { name: "watch.js", content_type: JS, body: include_str!("../pages/watch.js") },
    Asset { name: "render.js", content_type: JS, body: include_str!("../pages/render.js") },
    Asset { name: "style.css", content_type: CSS, body: include_str!("../pages/style.css") },
];

const CONSOLE_HTML: &str = include_str!("../pages/console.html");
const WATCH_HTML: &str = include_str!("../pages/watch.html");

/// `GET /console`.
pub async fn console() -> Response {
    serve(HTML, CONSOLE_HTML)
}

/// `GET /console/{file}`.
pub async fn console_file(Path(name): Path<String>) -> Response {
    file(CONSOLE, &name)
}

/// `GET /watch`.
pub async fn watch() -> Response {
    serve(HTML, WATCH_HTML)
}

/// `GET /watch/{file}`.
pub async fn watch_file(Path(name): Path<String>) -> Response {
    file(WATCH, &name)
}

fn file(assets: &[Asset], name: &str) -> Response {
    match assets.iter().find(|asset| asset.name == name) {
        Some(asset) => serve(asset.content_type, asset.body),
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

fn serve(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file a page or a module names (`"./x.js"`, `"/console/x.css"`) is served
    /// beside it, so a page cannot ask for a file that is not there.
    #[test]
    fn every_file_named_is_served() {
        let pages: [(&str, &str, &[Asset]); 2] = [("/console/", CONSOLE_HTML, CONSOLE), ("/watch/", WATCH_HTML, WATCH)];
        for (prefix, html, assets) in pages {
            let mut sources: Vec<&str> = vec![html];
            sources.extend(assets.iter().map(|asset| asset.body));
            let mut named = 0;
            for source in sources {
                for marker in ["\"./", "'./", &format!("\"{prefix}")] {
                    for (at, _) in source.match_indices(marker) {
                        let rest = &source[at + marker.len()..];
                        let name: String =
                            rest.chars().take_while(|c| c.is_ascii_alphanumeric() || "._-".contains(*c)).collect();
                        if name.ends_with(".js") || name.ends_with(".css") {
                            named += 1;
                            assert!(assets.iter().any(|asset| asset.name == name), "{prefix}{name} is not served");
                        }
                    }
                }
            }
            assert!(named >= assets.len(), "only {named} files named under {prefix}");
        }
    }
}
