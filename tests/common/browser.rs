//! A browser for the onboarding tests: an HTTP client that keeps the example web app's
//! session cookie (sent only to the app, as a browser scopes it), follows no redirect by
//! itself (each hop is a step the test checks), and keeps every page it saw for leak scans.

pub struct Browser {
    http: reqwest::Client,
    /// Every page, redirect target and body the browser received.
    pub pages: Vec<u8>,
    /// The app's session cookie (`sid=...`), as a browser keeps it.
    cookie: Option<String>,
}

impl Browser {
    pub fn new() -> Self {
        // A plain-HTTP browser; reqwest still wants a TLS provider chosen: ours, ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Browser { http, pages: Vec::new(), cookie: None }
    }

    /// The CSRF token of the app's forms (from its home page, which also sets the cookie).
    pub async fn csrf(&mut self, app: &str) -> String {
        let (_, _, home) = self.get(&format!("{app}/")).await;
        let at = home.find("name=\"csrf\" value=\"").expect("a CSRF field") + "name=\"csrf\" value=\"".len();
        home[at..].split('"').next().unwrap().to_owned()
    }

    async fn keep(&mut self, r: reqwest::Response) -> (u16, Option<String>, String) {
        let status = r.status().as_u16();
        if let Some(c) = r.headers().get("set-cookie").and_then(|v| v.to_str().ok())
            && let Some(sid) = c.split(';').next().filter(|kv| kv.starts_with("sid="))
        {
            self.cookie = Some(sid.to_owned());
        }
        let location = r.headers().get("location").map(|v| v.to_str().unwrap().to_owned());
        let body = r.text().await.unwrap();
        self.pages.extend_from_slice(location.as_deref().unwrap_or("").as_bytes());
        self.pages.extend_from_slice(body.as_bytes());
        (status, location, body)
    }

    /// Sends the cookie only to the app (not to Go's pages), as a browser scopes it.
    fn with_cookie(&self, req: reqwest::RequestBuilder, url: &str, app_host: Option<&str>) -> reqwest::RequestBuilder {
        match (&self.cookie, app_host) {
            (Some(c), Some(h)) if url.starts_with(h) => req.header("cookie", c.as_str()),
            _ => req,
        }
    }

    pub async fn get(&mut self, url: &str) -> (u16, Option<String>, String) {
        let host = self.app_host(url);
        let r = self.with_cookie(self.http.get(url), url, host.as_deref()).send().await.unwrap();
        self.keep(r).await
    }

    pub async fn post(&mut self, url: &str, form: &[(&str, &str)]) -> (u16, Option<String>, String) {
        let host = self.app_host(url);
        let r = self.with_cookie(self.http.post(url).form(form), url, host.as_deref()).send().await.unwrap();
        self.keep(r).await
    }

    /// The origin of `url` when it is the app's (every app URL has one of its paths).
    fn app_host(&self, url: &str) -> Option<String> {
        let u = reqwest::Url::parse(url).ok()?;
        let app_path = ["/", "/connect", "/callback", "/settings/key"].contains(&u.path());
        app_path.then(|| u.origin().ascii_serialization())
    }

    /// Clicks "Connect", follows Go's approval page, lands on the callback; returns the
    /// callback URL and the final page.
    pub async fn connect(&mut self, app: &str) -> (String, String) {
        let csrf = self.csrf(app).await;
        let (status, to_go, _) = self.post(&format!("{app}/connect"), &[("csrf", &csrf)]).await;
        assert_eq!(status, 303, "connect redirects to Go");
        let (status, back, _) = self.get(&to_go.unwrap()).await;
        assert_eq!(status, 302, "Go's approval page redirects back");
        let back = back.unwrap();
        assert!(back.starts_with(&format!("{app}/callback?")), "{back}");
        let (status, _, page) = self.get(&back).await;
        assert_eq!(status, 200);
        (back, page)
    }
}
