//! User agent → browser, OS, device type and bot flag, with `woothee` (pure Rust, its patterns
//! compiled in) doing the parsing and a little normalisation on top: `woothee` reports tablets as
//! smartphones and names OSes by device (`iPhone`, `Windows 10`), which reports do not want.
//!
//! Hits without a user agent of their own (Measurement Protocol, server-side Segment) are
//! described from what the sender stated about the device instead ([`from_device`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::hit::Device;

/// What a user agent says about the client.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserAgent {
    /// Browser or client name as `woothee` knows it: `Chrome`, `Safari`, `Edge`, `Firefox`,
    /// `SamsungBrowser`, `Webview` (in-app browsers), a crawler's name (`Googlebot`), or
    /// `HTTP Library` for tools like curl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser: Option<String>,
    /// The browser's major version, e.g. `120`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser_version: Option<String>,
    /// Operating system family: `Windows`, `macOS`, `iOS` (iPhone, iPad, iPod), `Android`,
    /// `Linux`, `ChromeOS`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// OS version when the agent states it: `10` (Windows 10 and 11 send the same), `17.1.2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    pub device_type: DeviceType,
    /// A crawler, monitor, headless browser or HTTP library rather than a person's browser.
    /// An empty user agent counts as a bot: every browser sends one.
    #[serde(default)]
    pub bot: bool,
}

/// The kind of device a hit came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceType {
    Desktop,
    Mobile,
    Tablet,
    Bot,
    /// TVs, consoles, feature-poor or unknown clients.
    #[default]
    Other,
}

impl DeviceType {
    /// The serialized name (`desktop`, `mobile`, ...), as analytics stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Desktop => "desktop",
            Self::Mobile => "mobile",
            Self::Tablet => "tablet",
            Self::Bot => "bot",
            Self::Other => "other",
        }
    }
}

/// Parses a user agent string (uncached: callers go through `Enricher`'s cache).
pub(super) fn parse(agent: &str) -> UserAgent {
    let agent = agent.trim();
    if agent.is_empty() {
        return UserAgent {
            device_type: DeviceType::Bot,
            bot: true,
            ..UserAgent::default()
        };
    }
    let parsed = woothee::parser::Parser::new().parse(agent);
    let known = |text: &str| (text != "UNKNOWN" && !text.is_empty()).then(|| text.to_owned());
    let (browser, version, category, os, os_version) = match &parsed {
        Some(r) => (
            known(r.name),
            known(r.version),
            r.category,
            r.os,
            &*r.os_version,
        ),
        None => (None, None, "UNKNOWN", "UNKNOWN", "UNKNOWN"),
    };
    // `woothee`'s crawlers plus the gateway's list of automation tokens (one list for both).
    let bot = category == "crawler"
        || browser.as_deref() == Some("HTTP Library")
        || crate::gateway::edge::is_bot(Some(agent));
    let (os, os_version) = normalise_os(os, os_version);
    let device_type = match category {
        _ if bot => DeviceType::Bot,
        "pc" => DeviceType::Desktop,
        "smartphone" if is_tablet(agent, os.as_deref()) => DeviceType::Tablet,
        "smartphone" | "mobilephone" => DeviceType::Mobile,
        _ => DeviceType::Other,
    };
    UserAgent {
        browser,
        browser_version: version.as_deref().and_then(major_version),
        os,
        os_version,
        device_type,
        bot,
    }
}

/// The device as the sender described it (MP `device`, Segment `context.os`/`context.device`).
pub(super) fn from_device(device: &Device, extra_device: Option<&Value>) -> UserAgent {
    let text = |name: &str| {
        extra_device
            .and_then(|d| d.get(name))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let category = device.category.as_deref().unwrap_or_default();
    let device_type = match category.to_ascii_lowercase().as_str() {
        "desktop" | "pc" | "computer" => DeviceType::Desktop,
        // Segment's mobile libraries put the platform here (`ios`, `android`).
        "mobile" | "smartphone" | "phone" | "ios" | "android" => DeviceType::Mobile,
        "tablet" => DeviceType::Tablet,
        _ => DeviceType::Other,
    };
    UserAgent {
        browser: text("browser").map(str::to_owned),
        browser_version: text("browser_version").and_then(major_version),
        os: device.os_name.clone(),
        os_version: device.os_version.clone(),
        device_type,
        bot: false,
    }
}

/// `120.0.6099.144` → `120`; nothing when the version does not start with a number.
fn major_version(version: &str) -> Option<String> {
    let major = version.split(['.', '_']).next().unwrap_or_default();
    (!major.is_empty() && major.bytes().all(|b| b.is_ascii_digit())).then(|| major.to_owned())
}

fn normalise_os(os: &str, version: &str) -> (Option<String>, Option<String>) {
    let version = (version != "UNKNOWN" && !version.is_empty()).then(|| version.replace('_', "."));
    let (name, version) = match os {
        "UNKNOWN" | "" => return (None, None),
        "iPhone" | "iPad" | "iPod" => ("iOS", version),
        "Mac OSX" | "Mac OS Classic" => ("macOS", version),
        // woothee puts the platform (`x86_64 14541.0.0`) where the version would be.
        "ChromeOS" => ("ChromeOS", None),
        // `Windows 10` with os_version `NT 10.0`: the name's suffix is the useful version.
        windows if windows.starts_with("Windows ") && !windows.contains("Phone") => {
            let release = &windows["Windows ".len()..];
            let release = (release != "UNKNOWN Ver").then(|| release.to_owned());
            ("Windows", release)
        }
        other => (other, version),
    };
    (Some(name.to_owned()), version)
}

/// `woothee` files tablets under smartphones. iPads say so; Android tablets are the Android
/// agents without the `Mobile` token (Google's own guidance to browser makers).
fn is_tablet(agent: &str, os: Option<&str>) -> bool {
    agent.contains("iPad")
        || agent.contains("Tablet")
        || agent.contains("Kindle")
        || agent.contains("Silk/")
        || (os == Some("Android") && !agent.contains("Mobile"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_are_the_serialized_ones() {
        for d in [
            DeviceType::Desktop,
            DeviceType::Mobile,
            DeviceType::Tablet,
            DeviceType::Bot,
            DeviceType::Other,
        ] {
            assert_eq!(serde_json::to_value(d).unwrap(), d.as_str());
        }
    }

    fn ua(
        browser: &str,
        version: &str,
        os: &str,
        os_version: Option<&str>,
        device: DeviceType,
    ) -> UserAgent {
        UserAgent {
            browser: Some(browser.into()),
            browser_version: (!version.is_empty()).then(|| version.into()),
            os: (!os.is_empty()).then(|| os.into()),
            os_version: os_version.map(Into::into),
            device_type: device,
            bot: device == DeviceType::Bot,
        }
    }

    #[test]
    fn chrome_on_windows_is_a_desktop() {
        let agent = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like \
                     Gecko) Chrome/120.0.0.0 Safari/537.36";
        assert_eq!(
            parse(agent),
            ua("Chrome", "120", "Windows", Some("10"), DeviceType::Desktop)
        );
    }

    #[test]
    fn safari_on_iphone_is_mobile_ios() {
        let agent = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 \
                     (KHTML, like Gecko) Version/17.1.2 Mobile/15E148 Safari/604.1";
        assert_eq!(
            parse(agent),
            ua("Safari", "17", "iOS", Some("17.1.2"), DeviceType::Mobile)
        );
    }

    #[test]
    fn android_without_mobile_token_and_ipad_are_tablets() {
        let galaxy_tab = "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, \
                          like Gecko) Chrome/120.0.0.0 Safari/537.36";
        assert_eq!(
            parse(galaxy_tab),
            ua("Chrome", "120", "Android", Some("13"), DeviceType::Tablet)
        );
        let ipad = "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, \
                    like Gecko) Version/16.6 Mobile/15E148 Safari/604.1";
        assert_eq!(parse(ipad).device_type, DeviceType::Tablet);
        assert_eq!(parse(ipad).os.as_deref(), Some("iOS"));
        let pixel = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like \
                     Gecko) Chrome/120.0.6099.144 Mobile Safari/537.36";
        assert_eq!(parse(pixel).device_type, DeviceType::Mobile);
    }

    #[test]
    fn crawlers_and_tools_are_bots() {
        let googlebot =
            parse("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)");
        assert_eq!(googlebot.browser.as_deref(), Some("Googlebot"));
        assert_eq!(googlebot.device_type, DeviceType::Bot);
        assert!(googlebot.bot);
        for agent in [
            "curl/8.5.0",
            "python-requests/2.31.0",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
             HeadlessChrome/120.0.0.0 Safari/537.36",
            "",
            "   ",
        ] {
            let parsed = parse(agent);
            assert!(parsed.bot, "{agent:?}");
            assert_eq!(parsed.device_type, DeviceType::Bot, "{agent:?}");
        }
    }

    #[test]
    fn macos_and_chromeos_names_are_normalised() {
        let mac = parse(
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like \
             Gecko) Version/17.1 Safari/605.1.15",
        );
        assert_eq!(
            mac,
            ua(
                "Safari",
                "17",
                "macOS",
                Some("10.15.7"),
                DeviceType::Desktop
            )
        );
        let chromebook = parse(
            "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) \
             Chrome/120.0.0.0 Safari/537.36",
        );
        assert_eq!(chromebook.os.as_deref(), Some("ChromeOS"));
        assert_eq!(chromebook.os_version, None);
    }

    #[test]
    fn unknown_agents_are_other_not_bots() {
        let parsed = parse("SomeSmartTV/1.0");
        assert_eq!(parsed.device_type, DeviceType::Other);
        assert!(!parsed.bot);
        assert_eq!(major_version("UNKNOWN"), None);
        assert_eq!(major_version("17_1"), Some("17".into()));
    }

    #[test]
    fn stated_device_is_used_without_an_agent() {
        let device = Device {
            category: Some("tablet".into()),
            os_name: Some("Android".into()),
            os_version: Some("14".into()),
            ..Device::default()
        };
        let stated = serde_json::json!({"browser": "Chrome", "browser_version": "121.0.1"});
        let parsed = from_device(&device, Some(&stated));
        assert_eq!(
            parsed,
            ua("Chrome", "121", "Android", Some("14"), DeviceType::Tablet)
        );
        assert_eq!(
            from_device(&Device::default(), None).device_type,
            DeviceType::Other
        );
    }
}
