"""Documents per source in, the last good version of every resource out, with what was refused."""

from __future__ import annotations

import textwrap

import pytest

from controller.store import Problem, ResourceStore
from meshcore.resources import (
    Document,
    ManifestError,
    Pod,
    ResourceKey,
    Service,
    documents_from_text,
)


def docs(text: str, source: str = "shop.yaml") -> list[Document]:
    return documents_from_text(textwrap.dedent(text), source)


def bad_yaml(source: str = "shop.yaml") -> ManifestError:
    with pytest.raises(ManifestError) as caught:
        documents_from_text("kind: Pod\nmetadata: {name: [\n", source)
    return caught.value


def pod(name: str, image: str = "cart:1", namespace: str = "shop") -> str:
    return f"""
    apiVersion: v1
    kind: Pod
    metadata: {{name: {name}, namespace: {namespace}}}
    spec:
      containers: [{{name: app, image: "{image}"}}]
    """


def bad_pod(name: str, namespace: str = "shop") -> str:
    return f"""
    apiVersion: v1
    kind: Pod
    metadata: {{name: {name}, namespace: {namespace}}}
    spec:
      containers: []
    """


SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  selector: {app: cart}
  ports: [{port: 80}]
"""


def join(*parts: str) -> str:
    return "\n---\n".join(textwrap.dedent(p) for p in parts)


CART = ResourceKey("Pod", "shop", "cart")
CHECKOUT = ResourceKey("Pod", "shop", "checkout")
CART_SVC = ResourceKey("Service", "shop", "cart")


@pytest.fixture
def store() -> ResourceStore:
    return ResourceStore()


def image_of(store: ResourceStore, key: ResourceKey) -> str:
    resource = store.resources()[key]
    assert isinstance(resource, Pod)
    return resource.spec.containers[0].image


# --- accepting and refusing ---------------------------------------------------------------------


def test_good_documents_are_accepted_with_no_problems(store):
    store.set_source("shop.yaml", docs(join(pod("cart"), SERVICE)))
    assert store.resources().keys() == {CART, CART_SVC}
    assert isinstance(store.resources()[CART_SVC], Service)
    assert store.problems() == []


def test_an_invalid_document_is_reported_and_skipped_and_the_rest_accepted(store):
    store.set_source("shop.yaml", docs(join(pod("cart"), bad_pod("checkout"), SERVICE)))
    assert store.resources().keys() == {CART, CART_SVC}
    (problem,) = store.problems()
    assert (problem.source, problem.resource, problem.field) == (
        "shop.yaml#2",
        "Pod shop/checkout",
        "spec.containers",
    )
    assert problem.reason == "a pod needs at least one container"
    assert problem.keeps_last_good is False
    assert problem.message == (
        "shop.yaml#2: Pod shop/checkout: spec.containers: a pod needs at least one container"
    )


def test_an_invalid_new_version_keeps_the_last_good_one_from_the_same_file_in_force(store):
    store.set_source("shop.yaml", docs(join(pod("cart"), pod("checkout"))))
    good = store.resources()[CHECKOUT]
    store.set_source("shop.yaml", docs(join(pod("cart", "cart:2"), bad_pod("checkout"))))
    assert store.resources()[CHECKOUT] is good
    assert image_of(store, CART) == "cart:2"
    (problem,) = store.problems()
    assert (problem.resource, problem.keeps_last_good) == ("Pod shop/checkout", True)


def test_a_resource_with_the_default_namespace_left_out_keeps_its_last_good_version(store):
    store.set_source("a.yaml", docs(pod("cart", namespace="default"), "a.yaml"))
    good = store.resources()[ResourceKey("Pod", "default", "cart")]
    store.set_source("a.yaml", docs(bad_pod("cart").replace(", namespace: shop", ""), "a.yaml"))
    assert store.resources()[ResourceKey("Pod", "default", "cart")] is good
    assert store.problems()[0].keeps_last_good is True


def test_a_last_good_version_from_another_file_is_not_kept_by_this_one(store):
    store.set_source("a.yaml", docs(pod("cart"), "a.yaml"))
    store.set_source("b.yaml", docs(bad_pod("cart"), "b.yaml"))
    (problem,) = store.problems()
    assert (problem.source, problem.keeps_last_good) == ("b.yaml", False)
    store.remove_source("a.yaml")
    assert CART not in store.resources()


def test_a_fixed_document_replaces_the_last_good_one_and_clears_its_problem(store):
    store.set_source("shop.yaml", docs(pod("cart")))
    store.set_source("shop.yaml", docs(bad_pod("cart")))
    store.set_source("shop.yaml", docs(pod("cart", "cart:3")))
    assert image_of(store, CART) == "cart:3"
    assert store.problems() == []


def test_a_document_that_is_not_a_mapping_is_reported_without_a_resource(store):
    store.set_source("shop.yaml", docs(join(pod("cart"), "- just\n- a list\n")))
    assert store.resources().keys() == {CART}
    (problem,) = store.problems()
    assert problem == Problem(
        "shop.yaml#2", "", "", "a manifest must be a YAML mapping", False, problem.since
    )


def test_a_file_that_is_not_yaml_keeps_everything_it_last_defined(store):
    store.set_source("shop.yaml", docs(join(pod("cart"), SERVICE)))
    before = dict(store.resources())
    generation = store.generation
    error = bad_yaml()
    store.set_source("shop.yaml", error)
    assert store.resources() == before
    assert all(store.resources()[k] is v for k, v in before.items())
    assert store.generation == generation
    (problem,) = store.problems()
    assert (problem.source, problem.resource, problem.reason) == ("shop.yaml", "", error.reason)
    assert problem.reason.startswith("not valid YAML at line")
    assert problem.keeps_last_good is True


def test_a_new_file_that_is_not_yaml_defines_nothing_and_keeps_nothing(store):
    store.set_source("shop.yaml", bad_yaml())
    assert store.resources() == {}
    (problem,) = store.problems()
    assert problem.keeps_last_good is False


def test_a_resource_defined_twice_in_one_source_uses_the_first(store):
    store.set_source("shop.yaml", docs(join(pod("cart", "first:1"), pod("cart", "second:1"))))
    assert image_of(store, CART) == "first:1"
    (problem,) = store.problems()
    assert (problem.source, problem.resource, problem.field) == (
        "shop.yaml#2",
        "Pod shop/cart",
        "metadata.name",
    )
    assert "defined twice" in problem.reason
    assert problem.keeps_last_good is True


def test_when_two_sources_define_one_resource_the_first_source_by_name_wins(store):
    store.set_source("b.yaml", docs(pod("cart", "from-b:1"), "b.yaml"))
    store.set_source("a.yaml", docs(pod("cart", "from-a:1"), "a.yaml"))
    assert image_of(store, CART) == "from-a:1"
    store.remove_source("a.yaml")
    assert image_of(store, CART) == "from-b:1"


def test_problems_are_listed_by_source_name(store):
    store.set_source("b.yaml", docs(bad_pod("x"), "b.yaml"))
    store.set_source("a.yaml", docs(join(bad_pod("y"), bad_pod("z")), "a.yaml"))
    assert [(p.source, p.resource) for p in store.problems()] == [
        ("a.yaml#1", "Pod shop/y"),
        ("a.yaml#2", "Pod shop/z"),
        ("b.yaml", "Pod shop/x"),
    ]


# --- identity and generation --------------------------------------------------------------------


def test_an_unchanged_reparse_keeps_the_same_objects_and_generation(store):
    text = join(pod("cart"), pod("checkout"), SERVICE)
    store.set_source("shop.yaml", docs(text))
    before, generation = dict(store.resources()), store.generation
    store.set_source("shop.yaml", docs(text))
    assert store.generation == generation
    assert all(store.resources()[k] is v for k, v in before.items())


def test_a_change_bumps_the_generation_and_renews_only_the_changed_object(store):
    store.set_source("shop.yaml", docs(join(pod("cart"), pod("checkout"))))
    before, generation = dict(store.resources()), store.generation
    store.set_source("shop.yaml", docs(join(pod("cart"), pod("checkout", "checkout:2"))))
    assert store.generation == generation + 1
    assert store.resources()[CART] is before[CART]
    assert store.resources()[CHECKOUT] is not before[CHECKOUT]


def test_a_resource_left_out_of_its_file_is_gone(store):
    store.set_source("shop.yaml", docs(join(pod("cart"), pod("checkout"))))
    generation = store.generation
    store.set_source("shop.yaml", docs(pod("cart")))
    assert store.resources().keys() == {CART}
    assert store.generation == generation + 1


def test_a_still_invalid_reparse_does_not_bump_the_generation(store):
    store.set_source("shop.yaml", docs(pod("cart")))
    store.set_source("shop.yaml", docs(bad_pod("cart")))
    generation = store.generation
    store.set_source("shop.yaml", docs(bad_pod("cart")))
    assert store.generation == generation
    assert len(store.problems()) == 1


def test_removing_a_source_removes_its_resources_and_problems(store):
    store.set_source("a.yaml", docs(join(pod("cart"), bad_pod("x")), "a.yaml"))
    store.set_source("b.yaml", docs(pod("checkout"), "b.yaml"))
    generation = store.generation
    store.remove_source("a.yaml")
    assert store.resources().keys() == {CHECKOUT}
    assert store.problems() == []
    assert store.generation == generation + 1


def test_removing_a_source_with_only_problems_clears_them(store):
    store.set_source("a.yaml", bad_yaml("a.yaml"))
    store.remove_source("a.yaml")
    assert store.problems() == []


def test_removing_an_unknown_source_changes_nothing(store):
    store.set_source("a.yaml", docs(pod("cart"), "a.yaml"))
    generation = store.generation
    store.remove_source("never-seen.yaml")
    assert store.generation == generation
    assert store.resources().keys() == {CART}
