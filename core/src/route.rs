//! The route table: the first route whose match fits the request wins.

use crate::config::Route;

/// Header lookup, so the front ends can pass their own header maps without copying.
/// Names are given lower-case; implementations compare case-insensitively.
pub trait Headers {
    /// The first value of header `name`, if present and valid UTF-8.
    fn get(&self, name: &str) -> Option<&str>;
}

/// What routing looks at.
pub struct RequestHead<'a, H: Headers + ?Sized> {
    /// `Host` (or `:authority`), possibly with a port.
    pub host: Option<&'a str>,
    /// The path without the query.
    pub path: &'a str,
    /// The request headers.
    pub headers: &'a H,
}

/// Compiled matchers for a route list, in order.
#[derive(Debug, Clone)]
pub struct RouteTable {
    _todo: (),
}

impl RouteTable {
    /// Compiles the matchers of `routes` (already validated).
    pub fn new(routes: &[Route]) -> Self {
        let _ = routes;
        todo!()
    }

    /// The index of the first route that matches, or `None` (the front end answers 404).
    pub fn find<H: Headers + ?Sized>(&self, req: &RequestHead<'_, H>) -> Option<usize> {
        let _ = req;
        todo!()
    }
}
