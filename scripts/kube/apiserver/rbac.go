package main

import (
	"context"
	"fmt"
	"strings"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	"k8s.io/client-go/informers"
	rbaclisters "k8s.io/client-go/listers/rbac/v1"
	"k8s.io/client-go/tools/cache"
)

// rbacAuthorizer evaluates the stored Roles, ClusterRoles and bindings with Kubernetes' RBAC
// rules (kube-apiserver's authorizer is in k8s.io/kubernetes, which is not packaged). Only with
// --authorization-mode=RBAC. There are no bootstrap roles (cluster-admin, view, system:...):
// authenticated users get discovery, the rest comes from the objects tests create; ClusterRole
// aggregation is computed at evaluation (there is no aggregation controller).
type rbacAuthorizer struct {
	roles               rbaclisters.RoleLister
	roleBindings        rbaclisters.RoleBindingLister
	clusterRoles        rbaclisters.ClusterRoleLister
	clusterRoleBindings rbaclisters.ClusterRoleBindingLister
	synced              []cache.InformerSynced
}

func newRBACAuthorizer(factory informers.SharedInformerFactory) *rbacAuthorizer {
	rbac := factory.Rbac().V1()
	a := &rbacAuthorizer{
		roles: rbac.Roles().Lister(), roleBindings: rbac.RoleBindings().Lister(),
		clusterRoles: rbac.ClusterRoles().Lister(), clusterRoleBindings: rbac.ClusterRoleBindings().Lister(),
	}
	a.synced = []cache.InformerSynced{
		rbac.Roles().Informer().HasSynced, rbac.RoleBindings().Informer().HasSynced,
		rbac.ClusterRoles().Informer().HasSynced, rbac.ClusterRoleBindings().Informer().HasSynced,
	}
	return a
}

// waitForSync backs a post-start hook, so /readyz fails until RBAC objects are known.
func (r *rbacAuthorizer) waitForSync(ctx context.Context) error {
	if !cache.WaitForCacheSync(ctx.Done(), r.synced...) {
		return fmt.Errorf("RBAC informers did not sync")
	}
	return nil
}

var (
	publicPaths    = []string{"/healthz", "/livez", "/readyz", "/version", "/version/"}
	discoveryPaths = []string{"/api", "/api/*", "/apis", "/apis/*", "/openapi", "/openapi/*"}
)

func (r *rbacAuthorizer) Authorize(ctx context.Context, a authorizer.Attributes) (authorizer.Decision, string, error) {
	u := a.GetUser()
	if u == nil {
		return authorizer.DecisionNoOpinion, "no user", nil
	}
	// system:public-info-viewer (everyone) and system:discovery (authenticated users), which a
	// real cluster binds by default.
	if !a.IsResourceRequest() && a.GetVerb() == "get" {
		if nonResourceMatches(publicPaths, a.GetPath()) ||
			(contains(u.GetGroups(), user.AllAuthenticated) && nonResourceMatches(discoveryPaths, a.GetPath())) {
			return authorizer.DecisionAllow, "discovery", nil
		}
	}
	// system:basic-user: anyone authenticated may ask what they may do.
	if a.IsResourceRequest() && a.GetVerb() == "create" && a.GetAPIGroup() == "authorization.k8s.io" &&
		a.GetResource() == "selfsubjectaccessreviews" && contains(u.GetGroups(), user.AllAuthenticated) {
		return authorizer.DecisionAllow, "basic user", nil
	}
	bindings, err := r.clusterRoleBindings.List(labels.Everything())
	if err != nil {
		return authorizer.DecisionNoOpinion, "", err
	}
	for _, b := range bindings {
		if appliesTo(u, b.Subjects, "") && r.allows(a, b.RoleRef, "") {
			return authorizer.DecisionAllow, "RBAC: allowed by ClusterRoleBinding " + b.Name, nil
		}
	}
	if ns := a.GetNamespace(); ns != "" && a.IsResourceRequest() {
		bindings, err := r.roleBindings.RoleBindings(ns).List(labels.Everything())
		if err != nil {
			return authorizer.DecisionNoOpinion, "", err
		}
		for _, b := range bindings {
			if appliesTo(u, b.Subjects, ns) && r.allows(a, b.RoleRef, ns) {
				return authorizer.DecisionAllow, fmt.Sprintf("RBAC: allowed by RoleBinding %s/%s", ns, b.Name), nil
			}
		}
	}
	// No reason, as kube-apiserver's RBAC: the 403 names the user, verb and resource already.
	return authorizer.DecisionNoOpinion, "", nil
}

func (r *rbacAuthorizer) allows(a authorizer.Attributes, ref rbacv1.RoleRef, namespace string) bool {
	for _, rule := range r.rules(ref, namespace) {
		if ruleAllows(a, rule) {
			return true
		}
	}
	return false
}

func (r *rbacAuthorizer) rules(ref rbacv1.RoleRef, namespace string) []rbacv1.PolicyRule {
	switch ref.Kind {
	case "Role":
		role, err := r.roles.Roles(namespace).Get(ref.Name)
		if err != nil {
			return nil
		}
		return role.Rules
	case "ClusterRole":
		role, err := r.clusterRoles.Get(ref.Name)
		if err != nil {
			return nil
		}
		if role.AggregationRule == nil {
			return role.Rules
		}
		return r.aggregated(role)
	}
	return nil
}

// aggregated: the rules of every ClusterRole an aggregationRule selects (what the aggregation
// controller would have written into its rules).
func (r *rbacAuthorizer) aggregated(role *rbacv1.ClusterRole) []rbacv1.PolicyRule {
	rules := append([]rbacv1.PolicyRule{}, role.Rules...)
	for _, sel := range role.AggregationRule.ClusterRoleSelectors {
		selector, err := metav1.LabelSelectorAsSelector(&sel)
		if err != nil {
			continue
		}
		matched, err := r.clusterRoles.List(selector)
		if err != nil {
			continue
		}
		for _, m := range matched {
			if m.Name != role.Name {
				rules = append(rules, m.Rules...)
			}
		}
	}
	return rules
}

func appliesTo(u user.Info, subjects []rbacv1.Subject, bindingNamespace string) bool {
	for _, s := range subjects {
		switch s.Kind {
		case rbacv1.UserKind:
			if s.Name == u.GetName() {
				return true
			}
		case rbacv1.GroupKind:
			if contains(u.GetGroups(), s.Name) {
				return true
			}
		case rbacv1.ServiceAccountKind:
			ns := s.Namespace
			if ns == "" {
				ns = bindingNamespace
			}
			if ns != "" && serviceaccount.MakeUsername(ns, s.Name) == u.GetName() {
				return true
			}
		}
	}
	return false
}

func ruleAllows(a authorizer.Attributes, rule rbacv1.PolicyRule) bool {
	if !has(rule.Verbs, a.GetVerb()) {
		return false
	}
	if !a.IsResourceRequest() {
		return nonResourceMatches(rule.NonResourceURLs, a.GetPath())
	}
	if !has(rule.APIGroups, a.GetAPIGroup()) {
		return false
	}
	resource, sub := a.GetResource(), a.GetSubresource()
	combined := resource
	if sub != "" {
		combined += "/" + sub
	}
	matched := false
	for _, r := range rule.Resources {
		if r == rbacv1.ResourceAll || r == combined || (sub != "" && r == "*/"+sub) {
			matched = true
			break
		}
	}
	if !matched {
		return false
	}
	return len(rule.ResourceNames) == 0 || contains(rule.ResourceNames, a.GetName())
}

func has(list []string, s string) bool {
	return contains(list, "*") || contains(list, s)
}

func nonResourceMatches(patterns []string, path string) bool {
	for _, p := range patterns {
		if p == "*" || p == path || (strings.HasSuffix(p, "*") && strings.HasPrefix(path, strings.TrimSuffix(p, "*"))) {
			return true
		}
	}
	return false
}
