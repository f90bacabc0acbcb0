//! The sites GA4's channel rules need to recognise — search engines, social networks, video and
//! shopping sites — by `utm_source` value and by referrer host.
//!
//! GA4 matches the session source against a long published list of exact strings (Google's
//! "source categories" list: `google`, `l.facebook.com`, `ar.pinterest.com`, …). This is a compact
//! version of the same list: one entry per site with its common aliases, and host patterns that
//! cover its country domains and subdomains, so `google.co.uk` and `lm.facebook.com` match without
//! listing each. YouTube, Vimeo and Twitch are video sites for GA4, not social ones.

use serde::{Deserialize, Serialize};

/// GA4's category of a traffic source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceCategory {
    Search,
    Social,
    Video,
    Shopping,
}

/// A site the channel rules know.
#[derive(Debug)]
pub(super) struct KnownSite {
    /// The source name used for it, e.g. `google`, `facebook`.
    pub name: &'static str,
    pub category: SourceCategory,
    /// `utm_source` values (lower case) that mean this site.
    aliases: &'static [&'static str],
    /// Host patterns, matched after dropping a leading `www.` or `m.`:
    /// `brand.*` — the brand on any public suffix (`google.com`, `google.co.uk`), no subdomain;
    /// `*.domain` — the domain or any subdomain; anything else — that host exactly.
    hosts: &'static [&'static str],
}

use SourceCategory::{Search, Shopping, Social, Video};

const fn site(
    name: &'static str,
    category: SourceCategory,
    aliases: &'static [&'static str],
    hosts: &'static [&'static str],
) -> KnownSite {
    KnownSite {
        name,
        category,
        aliases,
        hosts,
    }
}

// One site per line reads as the list it is.
#[rustfmt::skip]
static SITES: &[KnownSite] = &[
    // Shopping first: `shopping.google.com` must not count as Google search.
    site("google shopping", Shopping, &["google shopping", "shopping.google"], &["shopping.google.*"]),
    site("instagram shopping", Shopping, &["igshopping"], &[]),
    site("amazon", Shopping, &["amazon"], &["amazon.*"]),
    site("ebay", Shopping, &["ebay"], &["ebay.*"]),
    site("etsy", Shopping, &["etsy"], &["etsy.*"]),
    site("shopify", Shopping, &["shopify"], &["*.shopify.com", "shop.app"]),
    site("walmart", Shopping, &["walmart"], &["walmart.*", "*.walmart.com"]),
    site("alibaba", Shopping, &["alibaba", "aliexpress"], &["*.alibaba.com", "aliexpress.*"]),
    site("mercadolibre", Shopping, &["mercadolibre"], &["mercadolibre.*"]),
    // Search: only the engines' search hosts; `mail.google.com` or `docs.google.com` are
    // ordinary referrals, as in GA4's list.
    site("google", Search, &["google"], &["google.*", "news.google.com", "lens.google.com"]),
    site("bing", Search, &["bing"], &["bing.*", "*.bing.com"]),
    site("yahoo", Search, &["yahoo"], &["yahoo.*", "*.search.yahoo.com"]),
    site("duckduckgo", Search, &["duckduckgo"], &["duckduckgo.*"]),
    site("baidu", Search, &["baidu"], &["baidu.*"]),
    site("yandex", Search, &["yandex"], &["yandex.*", "ya.ru"]),
    site("ecosia", Search, &["ecosia"], &["ecosia.*"]),
    site("naver", Search, &["naver"], &["naver.com", "search.naver.com"]),
    site("qwant", Search, &["qwant"], &["qwant.*", "lite.qwant.com"]),
    site("seznam", Search, &["seznam"], &["seznam.cz"]),
    site("sogou", Search, &["sogou"], &["sogou.*", "wap.sogou.com"]),
    site("brave", Search, &["brave"], &["search.brave.com"]),
    // Social.
    site("facebook", Social, &["facebook", "fb", "messenger"], &["facebook.*", "*.facebook.com", "fb.me", "fb.com", "*.messenger.com"]),
    site("instagram", Social, &["instagram", "ig"], &["instagram.*", "*.instagram.com"]),
    site("linkedin", Social, &["linkedin"], &["linkedin.*", "*.linkedin.com", "lnkd.in"]),
    site("twitter", Social, &["twitter", "x"], &["twitter.*", "*.twitter.com", "t.co", "x.com"]),
    site("tiktok", Social, &["tiktok"], &["tiktok.*", "*.tiktok.com"]),
    site("pinterest", Social, &["pinterest"], &["pinterest.*", "*.pinterest.com", "pin.it"]),
    site("reddit", Social, &["reddit"], &["reddit.*", "*.reddit.com"]),
    site("snapchat", Social, &["snapchat"], &["snapchat.*", "*.snapchat.com"]),
    site("whatsapp", Social, &["whatsapp"], &["whatsapp.*", "*.whatsapp.com", "wa.me"]),
    site("threads", Social, &["threads"], &["threads.net", "threads.com"]),
    site("telegram", Social, &["telegram"], &["t.me", "telegram.org"]),
    site("quora", Social, &["quora"], &["*.quora.com"]),
    site("vk", Social, &["vk", "vkontakte"], &["*.vk.com"]),
    // Video.
    site("youtube", Video, &["youtube"], &["youtube.*", "*.youtube.com", "youtu.be"]),
    site("vimeo", Video, &["vimeo"], &["*.vimeo.com"]),
    site("twitch", Video, &["twitch"], &["*.twitch.tv"]),
    site("dailymotion", Video, &["dailymotion"], &["dailymotion.*"]),
];

/// The known site a `utm_source` value or a source name stands for (case-insensitive). Values
/// that look like host names are matched as hosts (`l.facebook.com`).
pub(super) fn by_source(source: &str) -> Option<&'static KnownSite> {
    let source = source.trim().to_ascii_lowercase();
    SITES
        .iter()
        .find(|site| site.aliases.contains(&source.as_str()))
        .or_else(|| source.contains('.').then(|| by_host(&source)).flatten())
}

/// The known site a (lower-case) referrer host belongs to.
pub(super) fn by_host(host: &str) -> Option<&'static KnownSite> {
    let host = host.strip_prefix("www.").unwrap_or(host);
    let host = host.strip_prefix("m.").unwrap_or(host);
    SITES
        .iter()
        .find(|site| site.hosts.iter().any(|pattern| host_matches(host, pattern)))
}

fn host_matches(host: &str, pattern: &str) -> bool {
    if let Some(domain) = pattern.strip_prefix("*.") {
        host == domain
            || host
                .strip_suffix(domain)
                .is_some_and(|sub| sub.ends_with('.'))
    } else if let Some(brand) = pattern.strip_suffix(".*") {
        host.strip_prefix(brand)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(looks_like_public_suffix)
    } else {
        host == pattern
    }
}

/// `com`, `de`, `co.uk`, `com.br` — short enough to be a public suffix rather than another site
/// (`google.com.evil.example` is not Google). A heuristic in place of the full suffix list.
fn looks_like_public_suffix(tail: &str) -> bool {
    let alpha = |label: &str, max: usize| {
        (2..=max).contains(&label.len()) && label.bytes().all(|b| b.is_ascii_lowercase())
    };
    match tail.split_once('.') {
        None => alpha(tail, 6),
        Some((second, top)) => alpha(second, 3) && alpha(top, 2),
    }
}

/// Whether a referrer host is the page's own site: the same host, or one a subdomain of the
/// other (`www.` ignored). GA4 ignores such self-referrals.
pub(super) fn same_site(referrer_host: &str, page_host: &str) -> bool {
    let strip = |h: &'_ str| h.strip_prefix("www.").unwrap_or(h).to_owned();
    let (a, b) = (strip(referrer_host), strip(page_host));
    let sub_of = |sub: &str, parent: &str| {
        sub.strip_suffix(parent)
            .is_some_and(|prefix| prefix.ends_with('.'))
    };
    a == b || sub_of(&a, &b) || sub_of(&b, &a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name_of_host(host: &str) -> Option<&'static str> {
        by_host(host).map(|s| s.name)
    }

    #[test]
    fn hosts_match_country_domains_and_subdomains() {
        assert_eq!(name_of_host("www.google.com"), Some("google"));
        assert_eq!(name_of_host("google.co.uk"), Some("google"));
        assert_eq!(name_of_host("www.google.com.br"), Some("google"));
        assert_eq!(name_of_host("shopping.google.com"), Some("google shopping"));
        assert_eq!(name_of_host("l.facebook.com"), Some("facebook"));
        assert_eq!(name_of_host("m.facebook.com"), Some("facebook"));
        assert_eq!(name_of_host("t.co"), Some("twitter"));
        assert_eq!(name_of_host("x.com"), Some("twitter"));
        assert_eq!(name_of_host("lnkd.in"), Some("linkedin"));
        assert_eq!(name_of_host("uk.search.yahoo.com"), Some("yahoo"));
        assert_eq!(name_of_host("amazon.de"), Some("amazon"));
        assert_eq!(name_of_host("m.youtube.com"), Some("youtube"));
        assert_eq!(by_host("youtu.be").map(|s| s.category), Some(Video));
    }

    #[test]
    fn lookalikes_and_other_google_hosts_are_not_known() {
        assert_eq!(name_of_host("mail.google.com"), None);
        assert_eq!(name_of_host("google.com.evil.example"), None);
        assert_eq!(name_of_host("google.evil.com"), None);
        assert_eq!(name_of_host("notfacebook.com"), None);
        assert_eq!(name_of_host("t.com"), None);
        assert_eq!(name_of_host("example.com"), None);
    }

    #[test]
    fn sources_match_aliases_and_hosts() {
        assert_eq!(by_source("Google").map(|s| s.category), Some(Search));
        assert_eq!(by_source("fb").map(|s| s.name), Some("facebook"));
        assert_eq!(by_source("IG").map(|s| s.name), Some("instagram"));
        assert_eq!(by_source("x").map(|s| s.name), Some("twitter"));
        assert_eq!(
            by_source("l.instagram.com").map(|s| s.name),
            Some("instagram")
        );
        assert_eq!(
            by_source("Google Shopping").map(|s| s.category),
            Some(Shopping)
        );
        assert!(by_source("newsletter").is_none());
        assert!(by_source("(direct)").is_none());
    }

    #[test]
    fn self_referrals_are_recognised() {
        assert!(same_site("example.com", "example.com"));
        assert!(same_site("www.example.com", "example.com"));
        assert!(same_site("shop.example.com", "www.example.com"));
        assert!(!same_site("example.com.evil.net", "example.com"));
        assert!(!same_site("notexample.com", "example.com"));
        assert!(!same_site("google.com", "example.com"));
    }
}
