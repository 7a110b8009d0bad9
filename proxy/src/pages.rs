//! Responses the proxy writes itself: small HTML pages for browsers and redirects.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

pub struct Reply {
    pub status: u16,
    pub location: Option<String>,
    pub set_cookies: Vec<String>,
    pub body: Bytes,
}

impl Reply {
    pub fn redirect(status: u16, location: &str) -> Self {
        Self { status, location: Some(location.to_owned()), set_cookies: Vec::new(), body: Bytes::new() }
    }

    /// An HTML page naming the problem.
    pub fn page(status: u16, message: &str) -> Self {
        let title = match status {
            400 => "Bad request",
            404 => "Not found",
            421 => "Misdirected request",
            502 => "App unavailable",
            503 => "Unavailable",
            504 => "App timed out",
            _ => "Error",
        };
        let body = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{status} {title} · Meridian</title></head>\
             <body><h1>{status} {title}</h1><p>{}</p></body></html>\n",
            escape(message)
        );
        Self { status, location: None, set_cookies: Vec::new(), body: body.into() }
    }

    pub fn with_cookie(mut self, cookie: String) -> Self {
        self.set_cookies.push(cookie);
        self
    }

    pub async fn write(self, session: &mut Session) -> Result<()> {
        let mut resp = ResponseHeader::build(self.status, Some(6))?;
        resp.insert_header("content-type", "text/html; charset=utf-8")?;
        resp.insert_header("content-length", self.body.len().to_string())?;
        resp.insert_header("cache-control", "no-store")?;
        if let Some(l) = &self.location {
            resp.insert_header("location", l.as_str())?;
        }
        for c in self.set_cookies {
            resp.append_header("set-cookie", c)?;
        }
        let head_only = session.req_header().method == http::Method::HEAD || self.body.is_empty();
        session.write_response_header(Box::new(resp), head_only).await?;
        if !head_only {
            session.write_response_body(Some(self.body), true).await?;
        }
        Ok(())
    }
}

/// The message of a page [`Reply::page`] wrote (its one paragraph, still
/// escaped): what a client, the soak or a test reports as the cause.
pub fn page_message(html: &str) -> Option<&str> {
    let message = html.split_once("<p>")?.1.split_once("</p>")?.0.trim();
    (!message.is_empty()).then_some(message)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pages_message_reads_back() {
        let page = Reply::page(502, "The app is not reachable: <is it running?>");
        let html = std::str::from_utf8(&page.body).unwrap();
        assert_eq!(page_message(html), Some("The app is not reachable: &lt;is it running?&gt;"));
        assert_eq!(page_message("<html>no paragraph</html>"), None);
        assert_eq!(page_message("<p> </p>"), None);
    }
}
