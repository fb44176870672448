//! Realistic generated orders for demos, tests and benchmarks. Deterministic: the same
//! seed gives the same orders. Every generated order passes every validation rule.

use time::OffsetDateTime;

use crate::model::{Delivery, Item, Order, Payment, Rule};

const FIRST_NAMES: &[&str] = &[
    "Anna", "Ivan", "Maria", "Dmitry", "Olga", "Sergey", "Elena", "Pavel", "Yulia", "Artem", "Noa", "David", "Leah",
    "Amir",
];
const LAST_NAMES: &[&str] = &[
    "Petrova",
    "Sidorov",
    "Ivanova",
    "Kuznetsov",
    "Smirnova",
    "Popov",
    "Volkova",
    "Levi",
    "Cohen",
    "Mizrahi",
    "Sokolov",
    "Morozova",
];
const CITIES: &[(&str, &str)] = &[
    ("Moscow", "Moscow"),
    ("Kazan", "Tatarstan"),
    ("Novosibirsk", "Novosibirsk Oblast"),
    ("Yekaterinburg", "Sverdlovsk Oblast"),
    ("Kiryat Mozkin", "Kraiot"),
    ("Haifa", "Haifa District"),
    ("Saint Petersburg", "Leningrad Oblast"),
    ("Samara", "Samara Oblast"),
];
const STREETS: &[&str] =
    &["Ploshad Mira", "Lenina", "Sadovaya", "Tverskaya", "Herzl", "Gagarina", "Pushkina", "Nevsky Prospekt"];
const PRODUCTS: &[(&str, &str, i64)] = &[
    ("Mascaras", "Vivienne Sabo", 453),
    ("Sneakers", "Nike", 7990),
    ("Socks", "Adidas", 590),
    ("Headphones", "Samsung", 15990),
    ("T-shirt", "Zara", 1290),
    ("Backpack", "Xiaomi", 2490),
    ("Lipstick", "Maybelline", 699),
    ("Kettle", "Bosch", 3490),
    ("Notebook", "Moleskine", 1890),
    ("Phone case", "Apple", 4990),
    ("Jeans", "Levi's", 6990),
    ("Face cream", "Nivea", 399),
];
const SIZES: &[&str] = &["0", "S", "M", "L", "XL", "42", "44", "One size"];
const BANKS: &[&str] = &["alpha", "sber", "tinkoff", "vtb", "leumi"];
const PROVIDERS: &[&str] = &["wbpay", "applepay", "card"];
const SERVICES: &[&str] = &["meest", "cdek", "boxberry", "dhl"];
const CURRENCIES: &[&str] = &["RUB", "USD", "ILS", "EUR"];

/// splitmix64: small, fast, and good enough to vary test data.
pub struct Generator {
    state: u64,
    count: u64,
    max_items: u64,
}

impl Generator {
    /// Orders with 1 to `max_items` items each.
    pub fn new(seed: u64, max_items: u64) -> Generator {
        Generator { state: seed, count: 0, max_items: max_items.max(1) }
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        let unit = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        unit < p
    }

    fn pick<T: Copy>(&mut self, list: &[T]) -> T {
        list[self.below(list.len() as u64) as usize]
    }

    pub fn order(&mut self) -> Order {
        self.count += 1;
        let order_uid = format!("{:016x}{:x}", self.next(), self.count);
        let track_number = format!("WBIL{:010}", self.below(10_000_000_000));
        let (city, region) = self.pick(CITIES);
        let first = self.pick(FIRST_NAMES);
        let last = self.pick(LAST_NAMES);
        let delivery = Delivery {
            name: format!("{first} {last}"),
            phone: format!("+7{:010}", self.below(10_000_000_000)),
            zip: format!("{:06}", self.below(1_000_000)),
            city: city.into(),
            address: format!("{} {}", self.pick(STREETS), 1 + self.below(150)),
            region: region.into(),
            email: format!("{}.{}{}@example.com", first.to_lowercase(), last.to_lowercase(), self.below(1000)),
        };
        let n_items = 1 + self.below(self.max_items);
        let items: Vec<Item> = (0..n_items)
            .map(|_| {
                let (name, brand, base) = self.pick(PRODUCTS);
                let price = base + self.below(200) as i64;
                let sale = [0, 0, 10, 15, 20, 30, 50][self.below(7) as usize];
                Item {
                    chrt_id: 1_000_000 + self.below(9_000_000) as i64,
                    track_number: track_number.clone(),
                    price,
                    rid: format!("{:016x}{:x}", self.next(), self.count),
                    name: name.into(),
                    sale,
                    size: self.pick(SIZES).into(),
                    total_price: price * (100 - sale as i64) / 100,
                    nm_id: 1_000_000 + self.below(9_000_000) as i64,
                    brand: brand.into(),
                    status: 202,
                }
            })
            .collect();
        let goods_total: i64 = items.iter().map(|i| i.total_price).sum();
        let delivery_cost = [0, 300, 500, 1500][self.below(4) as usize];
        let custom_fee = [0, 0, 0, 150][self.below(4) as usize];
        // Between 2021-01-01 and 2026-01-01, whole seconds.
        let created = 1_609_459_200 + self.below(157_766_400) as i64;
        let date_created = OffsetDateTime::from_unix_timestamp(created).expect("in range");
        let payment = Payment {
            transaction: order_uid.clone(),
            request_id: String::new(),
            currency: self.pick(CURRENCIES).into(),
            provider: self.pick(PROVIDERS).into(),
            amount: goods_total + delivery_cost + custom_fee,
            payment_dt: created + self.below(600) as i64,
            bank: self.pick(BANKS).into(),
            delivery_cost,
            goods_total,
            custom_fee,
        };
        Order {
            order_uid,
            track_number,
            entry: "WBIL".into(),
            delivery,
            payment,
            items,
            locale: self.pick(&["en", "ru", "he"]).into(),
            internal_signature: String::new(),
            customer_id: format!("customer{}", self.below(100_000)),
            delivery_service: self.pick(SERVICES).into(),
            shardkey: self.below(10).to_string(),
            sm_id: 1 + self.below(100) as i64,
            date_created,
            oof_shard: self.below(3).to_string(),
        }
    }
}

/// The kinds of bad message `invalid` makes, each the rule that rejects it. (`Size` is
/// left out: a message over the limit is over most producers' limit too.) The order is
/// not the check order and must stay as it is: it decides which bad messages a seed gives.
pub const INVALID_KINDS: &[Rule] = &[
    Rule::Empty,
    Rule::Utf8,
    Rule::Json,
    Rule::Schema,
    Rule::DateCreated,
    Rule::OrderUid,
    Rule::TextLength,
    Rule::TextNul,
    Rule::Currency,
    Rule::Items,
    Rule::Money,
    Rule::Sale,
    Rule::Positive,
    Rule::PaymentTransaction,
    Rule::ItemTrackNumber,
    Rule::GoodsTotal,
    Rule::Amount,
];

impl Generator {
    /// A bad message of a kind from `INVALID_KINDS`, and that kind.
    pub fn invalid(&mut self) -> (Rule, Vec<u8>) {
        use serde_json::json;
        let kind = self.pick(INVALID_KINDS);
        let order = self.order();
        let mut v = serde_json::to_value(&order).expect("an order is JSON");
        match kind {
            Rule::Empty => return (kind, Vec::new()),
            Rule::Utf8 => return (kind, b"{\"order_uid\": \"\xff\xfe\"}".to_vec()),
            Rule::Json => {
                let json = order.to_json();
                return (kind, json[..json.len() / 2].to_vec());
            }
            Rule::Schema => v["payment"]["amount"] = json!(order.payment.amount.to_string()),
            Rule::DateCreated => v["date_created"] = json!("26.11.2021 06:22"),
            Rule::OrderUid => v["order_uid"] = json!(format!("{} <x>", order.order_uid)),
            Rule::TextLength => v["delivery"]["address"] = json!("x".repeat(300)),
            Rule::TextNul => v["delivery"]["city"] = json!("Kazan\u{0}"),
            Rule::Currency => v["payment"]["currency"] = json!("RUBLE"),
            Rule::Items => v["items"] = json!([]),
            Rule::Money => v["payment"]["custom_fee"] = json!(-100),
            Rule::Sale => v["items"][0]["sale"] = json!(150),
            Rule::Positive => v["items"][0]["nm_id"] = json!(0),
            Rule::PaymentTransaction => v["payment"]["transaction"] = json!("someone-else"),
            Rule::ItemTrackNumber => v["items"][0]["track_number"] = json!("WBILOTHER"),
            Rule::GoodsTotal => v["payment"]["goods_total"] = json!(order.payment.goods_total + 1),
            Rule::Amount => v["payment"]["amount"] = json!(order.payment.amount + 1),
            Rule::Size | Rule::Database => unreachable!("{kind} is not in INVALID_KINDS"),
        }
        (kind, v.to_string().into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Rules, decode};

    #[test]
    fn generated_orders_pass_every_rule_and_survive_a_round_trip() {
        let mut g = Generator::new(7, 5);
        for _ in 0..2000 {
            let order = g.order();
            let back = decode(Some(&order.to_json()), &Rules::default()).unwrap_or_else(|r| panic!("{r}"));
            assert_eq!(back, order);
            assert!((1..=5).contains(&order.items.len()));
        }
    }

    #[test]
    fn same_seed_same_orders_other_seed_other_orders() {
        let a: Vec<Order> = {
            let mut g = Generator::new(42, 3);
            (0..10).map(|_| g.order()).collect()
        };
        let b: Vec<Order> = {
            let mut g = Generator::new(42, 3);
            (0..10).map(|_| g.order()).collect()
        };
        let c: Vec<Order> = {
            let mut g = Generator::new(43, 3);
            (0..10).map(|_| g.order()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a[0].order_uid, c[0].order_uid);
    }

    #[test]
    fn each_invalid_kind_is_rejected_by_the_rule_of_its_name() {
        let mut g = Generator::new(3, 3);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            let (kind, payload) = g.invalid();
            let rejection = decode(Some(&payload), &Rules::default()).unwrap_err();
            assert_eq!(rejection.rule, kind, "{}", rejection.detail);
            seen.insert(kind);
        }
        assert_eq!(seen.len(), INVALID_KINDS.len());
    }

    #[test]
    fn uids_do_not_repeat() {
        let mut g = Generator::new(1, 1);
        let uids: std::collections::HashSet<String> = (0..50_000).map(|_| g.order().order_uid).collect();
        assert_eq!(uids.len(), 50_000);
    }
}
