//! The rules a message can break, with the names they are stored and counted under.

/// A rule a message can break, named in the dead letter's `rule` column and in the
/// `rule` label of `orders_messages_rejected_total`: so `as_str` must never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    Size,
    Empty,
    Utf8,
    Json,
    Schema,
    DateCreated,
    OrderUid,
    TextLength,
    TextNul,
    Currency,
    Items,
    Sale,
    Money,
    Positive,
    PaymentTransaction,
    ItemTrackNumber,
    GoodsTotal,
    Amount,
    Database,
}

impl Rule {
    /// Every rule, in the order `decode` checks them (`Database` is the store's: the
    /// database refused the order's rows).
    pub const ALL: [Rule; 19] = [
        Rule::Size,
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
        Rule::Sale,
        Rule::Money,
        Rule::Positive,
        Rule::PaymentTransaction,
        Rule::ItemTrackNumber,
        Rule::GoodsTotal,
        Rule::Amount,
        Rule::Database,
    ];

    /// The stable name stored and counted.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Size => "size",
            Rule::Empty => "empty",
            Rule::Utf8 => "utf8",
            Rule::Json => "json",
            Rule::Schema => "schema",
            Rule::DateCreated => "date_created",
            Rule::OrderUid => "order_uid",
            Rule::TextLength => "text_length",
            Rule::TextNul => "text_nul",
            Rule::Currency => "currency",
            Rule::Items => "items",
            Rule::Sale => "sale",
            Rule::Money => "money",
            Rule::Positive => "positive",
            Rule::PaymentTransaction => "payment_transaction",
            Rule::ItemTrackNumber => "item_track_number",
            Rule::GoodsTotal => "goods_total",
            Rule::Amount => "amount",
            Rule::Database => "database",
        }
    }

    /// The rule of a stored name, or None for a name this version does not know.
    pub fn from_name(name: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, not `write_str`, so that width and alignment apply (`{:<20}`).
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_keep_their_stored_names_in_check_order() {
        let names: Vec<&str> = Rule::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            names,
            [
                "size",
                "empty",
                "utf8",
                "json",
                "schema",
                "date_created",
                "order_uid",
                "text_length",
                "text_nul",
                "currency",
                "items",
                "sale",
                "money",
                "positive",
                "payment_transaction",
                "item_track_number",
                "goods_total",
                "amount",
                "database",
            ]
        );
        for rule in Rule::ALL {
            assert_eq!(Rule::from_name(rule.as_str()), Some(rule));
        }
        assert_eq!(Rule::from_name("Amount"), None);
        assert_eq!(format!("[{:<8}]", Rule::Sale), "[sale    ]");
    }

    /// The table of rules in docs/exactly-once.md lists them in the order they are checked.
    #[test]
    fn the_docs_list_the_rules_in_check_order() {
        let page = include_str!("../../docs/exactly-once.md");
        let section = page.split("## Validation and dead letters").nth(1).unwrap();
        let listed: Vec<&str> = section
            .lines()
            .take_while(|l| !l.starts_with("## "))
            .filter_map(|l| l.strip_prefix("| `"))
            .filter_map(|l| l.split_once('`').map(|(name, _)| name))
            .collect();
        let names: Vec<&str> = Rule::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(listed, names);
    }
}
