package main

import (
	"context"

	authorizationv1 "k8s.io/api/authorization/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
)

// accessReviewREST serves authorization.k8s.io/v1 subjectaccessreviews (self: false) and
// selfsubjectaccessreviews (self: true) by asking the server's own authorizer, so `kubectl auth
// can-i [--as=...]` answers as the server would decide. Nothing is stored.
type accessReviewREST struct {
	authz authorizer.Authorizer
	self  bool
}

func (r *accessReviewREST) New() runtime.Object {
	if r.self {
		return &authorizationv1.SelfSubjectAccessReview{}
	}
	return &authorizationv1.SubjectAccessReview{}
}
func (r *accessReviewREST) Destroy()              {}
func (r *accessReviewREST) NamespaceScoped() bool { return false }
func (r *accessReviewREST) GetSingularName() string {
	if r.self {
		return "selfsubjectaccessreview"
	}
	return "subjectaccessreview"
}

func (r *accessReviewREST) Create(ctx context.Context, obj runtime.Object, createValidation rest.ValidateObjectFunc, options *metav1.CreateOptions) (runtime.Object, error) {
	var (
		u        user.Info
		resource *authorizationv1.ResourceAttributes
		nonRes   *authorizationv1.NonResourceAttributes
		status   *authorizationv1.SubjectAccessReviewStatus
		out      runtime.Object
	)
	switch review := obj.DeepCopyObject().(type) {
	case *authorizationv1.SelfSubjectAccessReview:
		requester, ok := genericapirequest.UserFrom(ctx)
		if !ok {
			return nil, apierrors.NewBadRequest("no user in the request")
		}
		u, resource, nonRes, status, out = requester, review.Spec.ResourceAttributes, review.Spec.NonResourceAttributes, &review.Status, review
	case *authorizationv1.SubjectAccessReview:
		extra := map[string][]string{}
		for k, v := range review.Spec.Extra {
			extra[k] = v
		}
		u = &user.DefaultInfo{Name: review.Spec.User, UID: review.Spec.UID, Groups: review.Spec.Groups, Extra: extra}
		resource, nonRes, status, out = review.Spec.ResourceAttributes, review.Spec.NonResourceAttributes, &review.Status, review
	default:
		return nil, apierrors.NewBadRequest("not an access review")
	}
	if (resource == nil) == (nonRes == nil) {
		return nil, apierrors.NewBadRequest("spec: exactly one of resourceAttributes and nonResourceAttributes is required")
	}
	attrs := authorizer.AttributesRecord{User: u}
	if resource != nil {
		attrs.ResourceRequest = true
		attrs.Verb, attrs.Namespace, attrs.APIGroup, attrs.APIVersion = resource.Verb, resource.Namespace, resource.Group, resource.Version
		attrs.Resource, attrs.Subresource, attrs.Name = resource.Resource, resource.Subresource, resource.Name
	} else {
		attrs.Verb, attrs.Path = nonRes.Verb, nonRes.Path
	}
	if createValidation != nil {
		if err := createValidation(ctx, out.DeepCopyObject()); err != nil {
			return nil, err
		}
	}
	decision, reason, err := r.authz.Authorize(ctx, attrs)
	status.Allowed = decision == authorizer.DecisionAllow
	status.Denied = decision == authorizer.DecisionDeny
	status.Reason = reason
	if err != nil {
		status.EvaluationError = err.Error()
	}
	return out, nil
}
