//! The server-rendered pages, as maud markup. Pure functions of their arguments: pages
//! never touch locks, sockets or the database. maud escapes every interpolated value.

use maud::{DOCTYPE, Markup, html};
use time::macros::format_description;

use crate::model::Order;

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

/// `/`: the lookup form.
pub fn index() -> Markup {
    layout(
        "Look up an order",
        html! {
            h1 { "Look up an order" }
            (lookup_form(""))
        },
    )
}

/// An order shown in full: summary, delivery, payment and items.
pub fn order(order: &Order) -> Markup {
    let p = &order.payment;
    let d = &order.delivery;
    let created = order
        .date_created
        .format(format_description!("[year]-[month]-[day] [hour]:[minute]:[second] UTC"))
        .unwrap_or_else(|_| order.date_created.to_string());
    layout(
        &format!("Order {}", order.order_uid),
        html! {
            (lookup_form(&order.order_uid))
            h1 { "Order " code { (order.order_uid) } }
            section {
                h2 { "Order" }
                table.fields {
                    (row("Track number", &order.track_number))
                    (row("Entry", &order.entry))
                    (row("Created", &created))
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
                    (row("Currency", &p.currency))
                    (row("Goods total", &p.goods_total.to_string()))
                    (row("Delivery cost", &p.delivery_cost.to_string()))
                    (row("Custom fee", &p.custom_fee.to_string()))
                    (row("Amount", &p.amount.to_string()))
                    (row("Paid at (unix time)", &p.payment_dt.to_string()))
                }
            }
            section {
                h2 { "Items" }
                div.scroll {
                    table.items {
                        thead { tr {
                            th { "Name" } th { "Brand" } th { "Size" } th.num { "Price" } th.num { "Sale %" }
                            th.num { "Total" } th { "chrt_id" } th { "nm_id" } th { "rid" } th { "Track number" } th.num { "Status" }
                        } }
                        tbody {
                            @for i in &order.items {
                                tr {
                                    td { (i.name) } td { (i.brand) } td { (i.size) } td.num { (i.price) } td.num { (i.sale) }
                                    td.num { (i.total_price) } td { (i.chrt_id) } td { (i.nm_id) } td { code { (i.rid) } }
                                    td { (i.track_number) } td.num { (i.status) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
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

    #[test]
    fn order_page_shows_each_section_and_the_values() {
        let html = order(&canonical()).into_string();
        for needle in [
            "<h2>Order</h2>", "<h2>Delivery</h2>", "<h2>Payment</h2>", "<h2>Items</h2>",
            "<td>WBILMTESTTRACK</td>", "<td>Kiryat Mozkin</td>", "<td>1817</td>", "<td>Mascaras</td>",
            "<td>Vivienne Sabo</td>", "<td>2021-11-26 06:22:19 UTC</td>",
        ] {
            assert!(html.contains(needle), "missing {needle} in {html}");
        }
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
        for page in [index(), order(&canonical()), not_found("x"), bad_request("x", "y"), unavailable("z")] {
            let html = page.into_string();
            assert!(!html.contains("<script"));
            assert!(html.contains(r#"<link rel="stylesheet" href="/assets/style.css">"#));
        }
    }
}
