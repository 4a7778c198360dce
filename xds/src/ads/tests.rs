use super::*;
use crate::resources::any;

#[test]
fn names_come_from_the_resource() {
    let cluster = Cluster { name: "outbound|80||a".into(), ..Default::default() };
    let cla = ClusterLoadAssignment { cluster_name: "outbound|80||a".into(), ..Default::default() };
    assert_eq!(resource_name(&any(CLUSTER_TYPE_URL, &cluster)).unwrap(), "outbound|80||a");
    assert_eq!(resource_name(&any(CLUSTER_LOAD_ASSIGNMENT_TYPE_URL, &cla)).unwrap(), "outbound|80||a");
    assert!(resource_name(&Any::default()).is_err());
    assert_eq!(type_name(CLUSTER_LOAD_ASSIGNMENT_TYPE_URL), "ClusterLoadAssignment");
}
