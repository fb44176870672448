//! The in-memory copy of stored orders that the HTTP workers read from. It only ever
//! holds orders that PostgreSQL has committed. Locks are held for a map operation, never
//! across IO or rendering.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::model::Order;

pub struct Cache {
    orders: RwLock<HashMap<String, Arc<Order>>>,
    max_orders: usize,
}

impl Cache {
    pub fn new(max_orders: usize) -> Cache {
        Cache { orders: RwLock::new(HashMap::new()), max_orders }
    }

    pub fn get(&self, uid: &str) -> Option<Arc<Order>> {
        self.orders.read().get(uid).cloned()
    }

    /// Stores orders, replacing older versions. When the cache is full, another order
    /// makes room; the one evicted is still served, from PostgreSQL.
    pub fn insert_all(&self, orders: impl IntoIterator<Item = Order>) {
        let fresh: Vec<(String, Arc<Order>)> = orders.into_iter().map(|o| (o.order_uid.clone(), Arc::new(o))).collect();
        let mut map = self.orders.write();
        for (uid, order) in fresh {
            if map.len() >= self.max_orders && !map.contains_key(&uid) {
                let victim = map.keys().next().cloned();
                if let Some(victim) = victim {
                    map.remove(&victim);
                }
            }
            map.insert(uid, order);
        }
    }

    pub fn len(&self) -> usize {
        self.orders.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(uid: &str) -> Order {
        let mut o = crate::model::decode(Some(include_bytes!("../demo/model.json")), &Default::default()).unwrap();
        o.order_uid = uid.to_string();
        o
    }

    #[test]
    fn insert_then_get() {
        let cache = Cache::new(10);
        cache.insert_all([order("a"), order("b")]);
        assert_eq!(cache.get("a").unwrap().order_uid, "a");
        assert!(cache.get("c").is_none());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn newer_version_replaces_older() {
        let cache = Cache::new(10);
        cache.insert_all([order("a")]);
        let mut changed = order("a");
        changed.payment.amount = 5;
        cache.insert_all([changed]);
        assert_eq!(cache.get("a").unwrap().payment.amount, 5);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn never_holds_more_than_the_bound() {
        let cache = Cache::new(3);
        cache.insert_all((0..10).map(|i| order(&format!("o{i}"))));
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get("o9").unwrap().order_uid, "o9");
    }
}
