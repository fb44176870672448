//! The server-rendered pages, as maud markup. Pure functions of their arguments: pages
//! never touch locks, sockets or the database. maud escapes every interpolated value.

use maud::{DOCTYPE, Markup, html};
use time::macros::format_description;

use crate::model::{Order, OrderSummary};

/// The page shell: one stylesheet from `assets/`, no script.
fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · orders-svc" }
                link rel="stylesheet" href="/assets/style.css";
            }
            body {
                header { a.brand href="/" { "orders-svc" } }
                main { (body) }
            }
        }
    }
}

fn lookup_form(value: &str) -> Markup {
    html! {
        form.lookup method="get" action="/" {
            label for="uid" { "Order id" }
            input #uid type="text" name="uid" value=(value) required maxlength="64"
                placeholder="b563feb7b2b84b6test" autocomplete="off";
            button type="submit" { "Look up" }
        }
    }
}

/// `/`: the lookup form and the most recently ingested orders (None when they could
/// not be read).
pub fn index(recent: Option<&[OrderSummary]>) -> Markup {
    layout(
        "Look up an order",
        html! {
            h1 { "Look up an order" }
            (lookup_form(""))
            section.recent {
                h2 { "Recently ingested" }
                @match recent {
                    None => p.notice { "The list of recent orders is unavailable right now." },
                    Some([]) => p { "No orders yet." },
                    Some(recent) => div.scroll { table.items {
                        thead { tr { th { "Order" } th { "Created" } th.num { "Items" } th.num { "Amount" } } }
                        tbody {
                            @for o in recent {
                                tr {
                                    td { a href={ "/order/" (o.order_uid) } { code { (o.order_uid) } } }
                                    td { (date_time(o.date_created)) }
                                    td.num { (o.items) }
                                    td.num { (money(o.amount, &o.currency)) }
                                }
                            }
                        }
                    } },
                }
            }
        },
    )
}

/// An order shown in full: summary, delivery, payment and items.
/// The order's page. `json` and `etag` are the document `/api/order/<uid>` serves and
/// its validator: the page shows them as they are, below the tables.
pub fn order(order: &Order, json: &[u8], etag: &str) -> Markup {
    let p = &order.payment;
    let d = &order.delivery;
    let paid =
        time::OffsetDateTime::from_unix_timestamp(p.payment_dt).map_or_else(|_| p.payment_dt.to_string(), date_time);
    let items_total: i64 = order.items.iter().map(|i| i.total_price).sum();
    layout(
        &format!("Order {}", order.order_uid),
        html! {
            (lookup_form(&order.order_uid))
            h1 { "Order " code { (order.order_uid) } }
            p.summary {
                (order.items.len()) @if order.items.len() == 1 { " item" } @else { " items" }
                " · " strong { (money(p.amount, &p.currency)) }
                " · created " (date_time(order.date_created))
            }
            div.grid {
                section {
                    h2 { "Order" }
                    table.fields {
                        (row("Track number", &order.track_number))
                        (row("Entry", &order.entry))
                        (row("Created", &date_time(order.date_created)))
                        (row("Customer", &order.customer_id))
                        (row("Delivery service", &order.delivery_service))
                        (row("Locale", &order.locale))
                        (row("Shard key", &order.shardkey))
                        (row("SM id", &order.sm_id.to_string()))
                        (row("OOF shard", &order.oof_shard))
                        (row("Internal signature", &order.internal_signature))
                    }
                }
                section {
                    h2 { "Delivery" }
                    table.fields {
                        (row("Name", &d.name))
                        (row("Phone", &d.phone))
                        (row("Email", &d.email))
                        (row("Address", &d.address))
                        (row("City", &d.city))
                        (row("Region", &d.region))
                        (row("ZIP", &d.zip))
                    }
                }
                section {
                    h2 { "Payment" }
                    table.fields {
                        (row("Transaction", &p.transaction))
                        (row("Request id", &p.request_id))
                        (row("Provider", &p.provider))
                        (row("Bank", &p.bank))
                        (row("Paid at", &paid))
                        (row("Goods", &money(p.goods_total, &p.currency)))
                        (row("Delivery", &money(p.delivery_cost, &p.currency)))
                        (row("Customs fee", &money(p.custom_fee, &p.currency)))
                        tr.total { th scope="row" { "Amount" } td { (money(p.amount, &p.currency)) } }
                    }
                }
            }
            section {
                h2 { "Items" }
                div.scroll {
                    table.items {
                        thead { tr {
                            th { "Name" } th { "Brand" } th { "Size" } th.num { "Price" } th.num { "Sale" }
                            th.num { "Total" } th { "chrt_id" } th { "nm_id" } th { "rid" } th { "Track number" } th.num { "Status" }
                        } }
                        tbody {
                            @for i in &order.items {
                                tr {
                                    td { (i.name) } td { (i.brand) } td { (i.size) } td.num { (money(i.price, &p.currency)) }
                                    td.num { (i.sale) "%" } td.num { (money(i.total_price, &p.currency)) } td { (i.chrt_id) }
                                    td { (i.nm_id) } td { code { (i.rid) } } td { (i.track_number) } td.num { (i.status) }
                                }
                            }
                        }
                        tfoot { tr.total {
                            th scope="row" colspan="5" { "Items total" }
                            td.num { (money(items_total, &p.currency)) }
                            td colspan="5" {}
                        } }
                    }
                }
            }
            section.json {
                details {
                    summary { "JSON" }
                    p {
                        a href=(format!("/api/order/{}", order.order_uid)) { "/api/order/" (order.order_uid) }
                        " · ETag " code.etag { (etag) }
                    }
                    pre { code { (String::from_utf8_lossy(json)) } }
                }
            }
        },
    )
}

/// An amount with thousands separated and its currency: `1,817 USD`.
pub fn money(amount: i64, currency: &str) -> String {
    let digits = amount.unsigned_abs().to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let sign = if amount < 0 { "-" } else { "" };
    format!("{sign}{grouped} {currency}")
}

fn date_time(t: time::OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(format_description!("[year]-[month]-[day] [hour]:[minute] UTC"))
        .unwrap_or_else(|_| t.to_string())
}

fn row(label: &str, value: &str) -> Markup {
    html! { tr { th scope="row" { (label) } td { (value) } } }
}

/// No order has this id.
pub fn not_found(uid: &str) -> Markup {
    layout(
        "Order not found",
        html! {
            (lookup_form(uid))
            h1 { "Order not found" }
            p.notice { "No order with id " code { (uid) } " is stored." }
        },
    )
}

/// The id entered cannot be an order id.
pub fn bad_request(uid: &str, reason: &str) -> Markup {
    layout(
        "Not an order id",
        html! {
            (lookup_form(uid))
            h1 { "Not an order id" }
            p.notice { (reason) }
        },
    )
}

/// Something on our side failed; the visitor can try again.
pub fn unavailable(reason: &str) -> Markup {
    layout(
        "Try again shortly",
        html! {
            h1 { "Try again shortly" }
            p.notice { (reason) }
            (lookup_form(""))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical() -> Order {
        crate::model::decode(Some(include_bytes!("../demo/model.json")), &Default::default()).unwrap()
    }

    /// The order's page, with its JSON as `Order::to_json` writes it.
    fn order(o: &Order) -> Markup {
        super::order(o, &o.to_json(), "\"v1\"")
    }

    #[test]
    fn order_page_shows_each_section_and_the_values() {
        let html = order(&canonical()).into_string();
        for needle in [
            "<h2>Order</h2>",
            "<h2>Delivery</h2>",
            "<h2>Payment</h2>",
            "<h2>Items</h2>",
            "<td>WBILMTESTTRACK</td>",
            "<td>Kiryat Mozkin</td>",
            "<td>1,817 USD</td>",
            "<td>Mascaras</td>",
            "<td>Vivienne Sabo</td>",
            "<td>2021-11-26 06:22 UTC</td>",
            "<td>317 USD</td>",
            "<td>1,500 USD</td>",
        ] {
            assert!(html.contains(needle), "missing {needle} in {html}");
        }
    }

    #[test]
    fn order_page_links_its_json_and_shows_it_escaped_with_its_etag() {
        let mut o = canonical();
        o.delivery.name = "<b>\"Test\" & Testov</b>".into();
        let html = order(&o).into_string();
        assert!(
            html.contains(r#"<a href="/api/order/b563feb7b2b84b6test">/api/order/b563feb7b2b84b6test</a>"#),
            "{html}"
        );
        assert!(html.contains(r#"<details><summary>JSON</summary>"#), "{html}");
        assert!(html.contains(r#"ETag <code class="etag">&quot;v1&quot;</code>"#), "{html}");
        assert!(
            html.contains(r#"&quot;name&quot;:&quot;&lt;b&gt;\&quot;Test\&quot; &amp; Testov&lt;/b&gt;&quot;"#),
            "{html}"
        );
        assert!(!html.contains("<b>"));
    }

    #[test]
    fn money_is_grouped_with_its_currency() {
        assert_eq!(money(1817, "USD"), "1,817 USD");
        assert_eq!(money(0, "RUB"), "0 RUB");
        assert_eq!(money(999, "ILS"), "999 ILS");
        assert_eq!(money(1_234_567, "EUR"), "1,234,567 EUR");
        assert_eq!(money(-1000, "USD"), "-1,000 USD");
    }

    #[test]
    fn payment_time_is_a_date() {
        let html = order(&canonical()).into_string();
        assert!(html.contains("<th scope=\"row\">Paid at</th><td>2021-11-26 06:22 UTC</td>"), "{html}");
    }

    #[test]
    fn index_lists_recent_orders_as_links() {
        let o = canonical();
        let recent = [OrderSummary {
            order_uid: o.order_uid.clone(),
            date_created: o.date_created,
            amount: 1817,
            currency: "USD".into(),
            items: 1,
            ingested_at: o.date_created,
        }];
        let html = index(Some(&recent)).into_string();
        assert!(
            html.contains(r#"<a href="/order/b563feb7b2b84b6test"><code>b563feb7b2b84b6test</code></a>"#),
            "{html}"
        );
        assert!(index(Some(&[])).into_string().contains("No orders yet."));
        assert!(index(None).into_string().contains("unavailable"));
    }

    #[test]
    fn values_are_escaped() {
        let mut o = canonical();
        o.delivery.name = "<script>alert(\"x\")</script>".into();
        let html = order(&o).into_string();
        assert!(html.contains("<td>&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;</td>"), "{html}");
        assert!(!html.contains("<script>"));
        let html = not_found("\"><b>").into_string();
        assert!(html.contains("value=\"&quot;&gt;&lt;b&gt;\""), "{html}");
    }

    #[test]
    fn pages_have_no_inline_script_and_use_the_stylesheet() {
        for page in [index(None), order(&canonical()), not_found("x"), bad_request("x", "y"), unavailable("z")] {
            let html = page.into_string();
            assert!(!html.contains("<script"));
            assert!(html.contains(r#"<link rel="stylesheet" href="/assets/style.css">"#));
        }
    }
}
