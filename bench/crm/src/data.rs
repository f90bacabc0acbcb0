//! Synthetic but realistic contacts: names from many countries, one email each (free mail or
//! the company's domain), a US phone for about half, tags from a small set, lifecycle stages and
//! lead scores spread the way a marketing CRM has them. Every identifier carries the contact's
//! number `n`, so identifiers never collide by accident (a collision would merge two contacts).

use rand::Rng;
use rand::rngs::StdRng;

pub const FIRST: &[&str] = &[
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Charles",
    "Karen",
    "Christopher",
    "Lisa",
    "Daniel",
    "Nancy",
    "Matthew",
    "Betty",
    "Anthony",
    "Sandra",
    "Mark",
    "Margaret",
    "Donald",
    "Ashley",
    "Steven",
    "Kimberly",
    "Andrew",
    "Emily",
    "Paul",
    "Donna",
    "Joshua",
    "Michelle",
    "Kenneth",
    "Carol",
    "Kevin",
    "Amanda",
    "Brian",
    "Melissa",
    "George",
    "Deborah",
    "Timothy",
    "Stephanie",
    "Ana",
    "Lucas",
    "Gabriel",
    "Julia",
    "Mateus",
    "Beatriz",
    "Rafael",
    "Camila",
    "Pedro",
    "Larissa",
    "Luis",
    "Sofia",
    "Diego",
    "Valentina",
    "Carlos",
    "Isabella",
    "Juan",
    "Lucia",
    "Hiroshi",
    "Yuki",
    "Wei",
    "Mei",
    "Arjun",
    "Priya",
    "Rahul",
    "Ananya",
    "Olga",
    "Ivan",
    "Katarzyna",
    "Piotr",
    "Lars",
    "Ingrid",
    "Sven",
    "Astrid",
    "Amara",
    "Kwame",
    "Fatima",
    "Omar",
    "Leila",
    "Youssef",
    "Noah",
    "Emma",
    "Liam",
    "Olivia",
    "Elijah",
    "Ava",
    "Oliver",
    "Mia",
    "Lukas",
    "Hannah",
];

pub const LAST: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
    "Hill",
    "Flores",
    "Green",
    "Adams",
    "Nelson",
    "Baker",
    "Hall",
    "Rivera",
    "Campbell",
    "Mitchell",
    "Carter",
    "Roberts",
    "Silva",
    "Santos",
    "Oliveira",
    "Souza",
    "Pereira",
    "Costa",
    "Ferreira",
    "Almeida",
    "Carvalho",
    "Gomes",
    "Muller",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "Meyer",
    "Wagner",
    "Becker",
    "Schulz",
    "Hoffmann",
    "Rossi",
    "Russo",
    "Ferrari",
    "Esposito",
    "Bianchi",
    "Romano",
    "Colombo",
    "Ricci",
    "Marino",
    "Greco",
    "Dubois",
    "Durand",
    "Lefebvre",
    "Moreau",
    "Laurent",
    "Simon",
    "Michel",
    "Leroy",
    "Roux",
    "David",
    "Kowalski",
    "Nowak",
    "Wisniewski",
    "Wojcik",
    "Kaminski",
    "Lewandowski",
    "Zielinski",
    "Szymanski",
    "Wozniak",
    "Dabrowski",
    "Tanaka",
    "Suzuki",
    "Takahashi",
    "Watanabe",
    "Ito",
    "Yamamoto",
    "Nakamura",
    "Kobayashi",
    "Kato",
    "Yoshida",
    "Kim",
    "Park",
    "Choi",
    "Jung",
    "Kang",
    "Cho",
    "Yoon",
    "Jang",
    "Lim",
    "Han",
    "Patel",
    "Sharma",
    "Singh",
    "Kumar",
    "Gupta",
    "Shah",
    "Mehta",
    "Joshi",
    "Reddy",
    "Iyer",
    "Ivanov",
    "Petrov",
    "Sidorov",
    "Smirnov",
    "Kuznetsov",
    "Popov",
    "Volkov",
    "Sokolov",
    "Lebedev",
    "Kozlov",
    "Okafor",
    "Mensah",
    "Diallo",
    "Haddad",
    "Nasser",
    "Cohen",
    "Levi",
    "Andersson",
    "Johansson",
    "Karlsson",
];

/// The surname behind the `q` query: drawn with probability [`RARE_SHARE`], and the only
/// generated text (names, emails, domains, company names) containing [`RARE_FRAGMENT`].
pub const RARE_LAST: &str = "Brzezinski";
pub const RARE_FRAGMENT: &str = "rzezi";
pub const RARE_SHARE: f64 = 0.001;

const FREE_MAIL: &[&str] = &[
    "gmail.com",
    "yahoo.com",
    "outlook.com",
    "hotmail.com",
    "icloud.com",
    "proton.me",
    "gmx.de",
    "uol.com.br",
];

/// Area codes of big US cities (valid for libphonenumber, so the API accepts the numbers).
const AREAS: &[u32] = &[212, 312, 415, 617, 646, 213, 305, 206, 512, 303];

pub const API_TAGS: &[&str] = &[
    "newsletter",
    "webinar",
    "vip",
    "trial",
    "partner",
    "churned",
    "event-2026",
    "ebook",
];

/// Tags of bulk-loaded contacts, each drawn independently with its share.
pub const BULK_TAGS: &[(&str, f64)] = &[
    ("vip", 0.30),
    ("newsletter", 0.45),
    ("webinar", 0.15),
    ("trial", 0.10),
    ("churned", 0.05),
    ("partner", 0.03),
];

/// Lifecycle stages with their shares (sum 1).
pub const STAGES: &[(&str, f64)] = &[
    ("subscriber", 0.10),
    ("lead", 0.40),
    ("marketing_qualified_lead", 0.15),
    ("sales_qualified_lead", 0.08),
    ("opportunity", 0.07),
    ("customer", 0.15),
    ("evangelist", 0.03),
    ("other", 0.02),
];

pub fn stage(rng: &mut StdRng) -> &'static str {
    let mut x: f64 = rng.r#gen();
    for (name, share) in STAGES {
        if x < *share {
            return name;
        }
        x -= share;
    }
    "lead"
}

/// A lead score: most contacts low, a long tail of engaged ones (0–100).
pub fn lead_score(rng: &mut StdRng) -> i64 {
    let x: f64 = rng.r#gen();
    (x * x * 101.0).floor() as i64
}

pub struct Person {
    pub first: &'static str,
    pub last: &'static str,
    /// Normalized (lower-case), as stored.
    pub email: String,
    /// As a user would type it (sometimes capitalized).
    pub email_raw: String,
    /// E.164, as stored.
    pub phone: Option<String>,
    /// As typed: `(212) 200-0123`.
    pub phone_raw: Option<String>,
}

/// Contact number `n`'s identity. `domain`: the email domain (None: a free-mail provider).
pub fn person(n: u64, rng: &mut StdRng, phone_share: f64, domain: Option<&str>) -> Person {
    let first = FIRST[rng.gen_range(0..FIRST.len())];
    let last = if rng.gen_bool(RARE_SHARE) {
        RARE_LAST
    } else {
        LAST[rng.gen_range(0..LAST.len())]
    };
    let domain = domain.unwrap_or_else(|| FREE_MAIL[rng.gen_range(0..FREE_MAIL.len())]);
    let email_raw = if rng.gen_bool(0.1) {
        format!("{first}.{last}{n}@{domain}")
    } else {
        format!("{first}.{last}{n}@{domain}").to_lowercase()
    };
    let email = email_raw.to_lowercase();
    let (phone, phone_raw) = if rng.gen_bool(phone_share) {
        // Unique per n: the area cycles with n, the rest numbers n / 10.
        let area = AREAS[(n % AREAS.len() as u64) as usize];
        let rest = n / AREAS.len() as u64;
        let exchange = 200 + rest / 10_000;
        let line = rest % 10_000;
        (
            Some(format!("+1{area}{exchange}{line:04}")),
            Some(format!("({area}) {exchange}-{line:04}")),
        )
    } else {
        (None, None)
    };
    Person {
        first,
        last,
        email,
        email_raw,
        phone,
        phone_raw,
    }
}

const COMPANY_A: &[&str] = &[
    "Northwind",
    "Blue",
    "Summit",
    "Apex",
    "Bright",
    "Silver",
    "Green",
    "Pioneer",
    "Golden",
    "Evergreen",
    "Red",
    "Atlas",
    "Cedar",
    "Harbor",
    "Iron",
    "Lunar",
    "Maple",
    "Nova",
    "Oak",
    "Pacific",
    "Quantum",
    "River",
    "Stellar",
    "Tidal",
    "Urban",
    "Vertex",
    "Willow",
    "Zenith",
    "Crystal",
    "Prime",
];
const COMPANY_B: &[&str] = &[
    "Logistics",
    "Labs",
    "Foods",
    "Analytics",
    "Media",
    "Systems",
    "Health",
    "Capital",
    "Studios",
    "Motors",
    "Energy",
    "Dynamics",
    "Partners",
    "Retail",
    "Robotics",
    "Networks",
    "Bakery",
    "Outfitters",
    "Software",
    "Consulting",
    "Travel",
    "Fitness",
    "Pharma",
    "Designs",
    "Works",
];
const COMPANY_C: &[&str] = &["Inc", "LLC", "Ltd", "GmbH", "Co", "Group", "SA", "BV"];

pub struct Company {
    pub name: String,
    pub domain: String,
}

/// Company number `i`: a name like "Summit Robotics GmbH" and a unique domain.
pub fn company(i: usize, rng: &mut StdRng) -> Company {
    let a = COMPANY_A[rng.gen_range(0..COMPANY_A.len())];
    let b = COMPANY_B[rng.gen_range(0..COMPANY_B.len())];
    let c = COMPANY_C[rng.gen_range(0..COMPANY_C.len())];
    Company {
        name: format!("{a} {b} {c}"),
        domain: format!("{a}{b}{i}.com").to_lowercase(),
    }
}

/// What the app writes into `contacts.search_text` (crm `store::refresh_search`): names,
/// emails, phones with and without `+`, external ids, company name, lower-cased, space-separated.
pub fn search_text(p: &Person, company: Option<&str>) -> String {
    let mut parts: Vec<&str> = vec![p.first, p.last, &p.email];
    if let Some(phone) = &p.phone {
        parts.push(phone);
        parts.push(phone.trim_start_matches('+'));
    }
    parts.extend(company);
    parts.join(" ").to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rare_fragment_is_only_in_the_rare_name() {
        assert!(RARE_LAST.to_lowercase().contains(RARE_FRAGMENT));
        let all = FIRST
            .iter()
            .chain(LAST)
            .chain(FREE_MAIL)
            .chain(COMPANY_A)
            .chain(COMPANY_B)
            .chain(COMPANY_C)
            .chain(API_TAGS);
        for word in all {
            assert!(!word.to_lowercase().contains(RARE_FRAGMENT), "{word}");
        }
    }
}
