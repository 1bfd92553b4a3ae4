package main

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/authentication/authenticator"
	"k8s.io/apiserver/pkg/authentication/group"
	"k8s.io/apiserver/pkg/authentication/request/anonymous"
	"k8s.io/apiserver/pkg/authentication/request/bearertoken"
	"k8s.io/apiserver/pkg/authentication/request/union"
	"k8s.io/apiserver/pkg/authentication/serviceaccount"
	"k8s.io/apiserver/pkg/authentication/token/tokenfile"
	tokenunion "k8s.io/apiserver/pkg/authentication/token/union"
	"k8s.io/apiserver/pkg/authentication/user"
	"k8s.io/apiserver/pkg/authorization/authorizer"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
)

// signer is the RSA key service-account tokens are signed with (RS256, as kube-apiserver's
// default). It is kept in the data dir so tokens stay valid across a restart.
type signer struct {
	key    *rsa.PrivateKey
	keyID  string
	issuer string
}

func loadOrCreateSigner(path, issuer string) (*signer, error) {
	data, err := os.ReadFile(path)
	var key *rsa.PrivateKey
	switch {
	case err == nil:
		block, _ := pem.Decode(data)
		if block == nil {
			return nil, fmt.Errorf("%s: no PEM block", path)
		}
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	case errors.Is(err, os.ErrNotExist):
		key, err = rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, err
		}
		pemData := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
		if err := os.WriteFile(path, pemData, 0o600); err != nil {
			return nil, fmt.Errorf("writing the service-account key %s: %w", path, err)
		}
	default:
		return nil, fmt.Errorf("reading the service-account key %s: %w", path, err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(der)
	return &signer{key: key, keyID: base64.RawURLEncoding.EncodeToString(sum[:]), issuer: issuer}, nil
}

// claims are the JWT claims kube-apiserver puts in a bound service-account token.
type claims struct {
	Issuer     string     `json:"iss"`
	Subject    string     `json:"sub"`
	Audience   []string   `json:"aud"`
	Expiry     int64      `json:"exp"`
	NotBefore  int64      `json:"nbf"`
	IssuedAt   int64      `json:"iat"`
	ID         string     `json:"jti"`
	Kubernetes kubeClaims `json:"kubernetes.io"`
}

type ref struct {
	Name string `json:"name"`
	UID  string `json:"uid"`
}

type kubeClaims struct {
	Namespace      string `json:"namespace"`
	ServiceAccount ref    `json:"serviceaccount"`
	Pod            *ref   `json:"pod,omitempty"`
	Secret         *ref   `json:"secret,omitempty"`
	Node           *ref   `json:"node,omitempty"`
}

func (s *signer) sign(c *claims) (string, error) {
	header, _ := json.Marshal(map[string]string{"alg": "RS256", "kid": s.keyID})
	payload, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	signing := base64.RawURLEncoding.EncodeToString(header) + "." + base64.RawURLEncoding.EncodeToString(payload)
	digest := sha256.Sum256([]byte(signing))
	sig, err := rsa.SignPKCS1v15(rand.Reader, s.key, crypto.SHA256, digest[:])
	if err != nil {
		return "", err
	}
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig), nil
}

// verify checks the signature, issuer and validity window; audiences are the caller's.
func (s *signer) verify(token string, now time.Time) (*claims, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, errNotJWT
	}
	var header struct {
		Alg string `json:"alg"`
	}
	rawHeader, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil || json.Unmarshal(rawHeader, &header) != nil {
		return nil, errNotJWT
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return nil, errNotJWT
	}
	if header.Alg != "RS256" {
		return nil, fmt.Errorf("unsupported JWT algorithm %q", header.Alg)
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	if err := rsa.VerifyPKCS1v15(&s.key.PublicKey, crypto.SHA256, digest[:], sig); err != nil {
		return nil, errors.New("invalid signature")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, errNotJWT
	}
	var c claims
	if err := json.Unmarshal(payload, &c); err != nil {
		return nil, fmt.Errorf("malformed claims: %w", err)
	}
	if c.Issuer != s.issuer {
		return nil, errNotJWT // another issuer's token: not ours to judge
	}
	if now.Unix() >= c.Expiry {
		return nil, errors.New("token has expired")
	}
	if now.Unix() < c.NotBefore-60 {
		return nil, errors.New("token is not valid yet")
	}
	return &c, nil
}

var errNotJWT = errors.New("not a service-account token of this server")

// tokenSource issues (TokenRequest) and validates (authentication, TokenReview) bound tokens.
type tokenSource struct {
	signer    *signer
	audiences []string // the API server's own (--service-account-issuer)
	stores    *installed
	now       func() time.Time
}

func (t *tokenSource) clock() time.Time {
	if t.now != nil {
		return t.now()
	}
	return time.Now()
}

func (t *tokenSource) get(ctx context.Context, namespace, resource, name string) (metav1.Object, error) {
	store := t.stores.store(schema.GroupResource{Resource: resource})
	ctx = genericapirequest.WithNamespace(ctx, namespace)
	obj, err := store.Get(ctx, name, &metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	return mustMeta(obj), nil
}

// AuthenticateToken validates a token as kube-apiserver's service-account authenticator does
// for bound tokens: signature, issuer, expiry, an audience in common with the request's, and
// the service account and bound pod/secret still existing with the UIDs in the token.
func (t *tokenSource) AuthenticateToken(ctx context.Context, token string) (*authenticator.Response, bool, error) {
	c, err := t.signer.verify(token, t.clock())
	if errors.Is(err, errNotJWT) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	wanted, ok := authenticator.AudiencesFrom(ctx)
	if !ok || len(wanted) == 0 {
		wanted = t.audiences
	}
	common := authenticator.Audiences(wanted).Intersect(c.Audience)
	if len(common) == 0 {
		return nil, false, fmt.Errorf("token audiences %q is invalid for the target audiences %q", c.Audience, wanted)
	}
	k := c.Kubernetes
	sa, err := t.get(ctx, k.Namespace, "serviceaccounts", k.ServiceAccount.Name)
	if err != nil || string(sa.GetUID()) != k.ServiceAccount.UID || sa.GetDeletionTimestamp() != nil {
		return nil, false, fmt.Errorf("service account %s/%s (uid %s) is no longer valid", k.Namespace, k.ServiceAccount.Name, k.ServiceAccount.UID)
	}
	info := serviceaccount.ServiceAccountInfo{Name: k.ServiceAccount.Name, Namespace: k.Namespace, UID: k.ServiceAccount.UID, CredentialID: "JTI=" + c.ID}
	if k.Pod != nil {
		pod, err := t.get(ctx, k.Namespace, "pods", k.Pod.Name)
		// As kube-apiserver: a token outlives its pod's deletionTimestamp by 60 s at most.
		deleting := pod != nil && pod.GetDeletionTimestamp() != nil && pod.GetDeletionTimestamp().Time.Before(t.clock().Add(-60*time.Second))
		if err != nil || string(pod.GetUID()) != k.Pod.UID || deleting {
			return nil, false, fmt.Errorf("pod %s/%s (uid %s) the token is bound to is no longer valid", k.Namespace, k.Pod.Name, k.Pod.UID)
		}
		info.PodName, info.PodUID = k.Pod.Name, k.Pod.UID
	}
	if k.Secret != nil {
		secret, err := t.get(ctx, k.Namespace, "secrets", k.Secret.Name)
		if err != nil || string(secret.GetUID()) != k.Secret.UID {
			return nil, false, fmt.Errorf("secret %s/%s the token is bound to is no longer valid", k.Namespace, k.Secret.Name)
		}
	}
	if k.Node != nil {
		info.NodeName, info.NodeUID = k.Node.Name, k.Node.UID
	}
	return &authenticator.Response{Audiences: common, User: info.UserInfo()}, true, nil
}

// issue makes a token for a TokenRequest on serviceaccounts/<name>/token.
func (t *tokenSource) issue(ctx context.Context, namespace, name string, req *authenticationv1.TokenRequest) error {
	path := field.NewPath("spec")
	expiration := int64(3600)
	if req.Spec.ExpirationSeconds != nil {
		expiration = *req.Spec.ExpirationSeconds
	}
	if expiration < 600 {
		return apierrors.NewInvalid(authenticationv1.SchemeGroupVersion.WithKind("TokenRequest").GroupKind(), name,
			field.ErrorList{field.Invalid(path.Child("expirationSeconds"), expiration, "may not specify a duration less than 10 minutes")})
	}
	if expiration > 1<<32 {
		return apierrors.NewInvalid(authenticationv1.SchemeGroupVersion.WithKind("TokenRequest").GroupKind(), name,
			field.ErrorList{field.TooLong(path.Child("expirationSeconds"), expiration, 1<<32)})
	}
	sa, err := t.get(ctx, namespace, "serviceaccounts", name)
	if err != nil {
		return err
	}
	if len(req.Spec.Audiences) == 0 {
		req.Spec.Audiences = t.audiences
	}
	now := t.clock()
	c := &claims{
		Issuer: t.signer.issuer, Subject: serviceaccount.MakeUsername(namespace, name), Audience: req.Spec.Audiences,
		IssuedAt: now.Unix(), NotBefore: now.Unix(), Expiry: now.Unix() + expiration, ID: string(uuid.NewUUID()),
		Kubernetes: kubeClaims{Namespace: namespace, ServiceAccount: ref{Name: name, UID: string(sa.GetUID())}},
	}
	if b := req.Spec.BoundObjectRef; b != nil {
		bound := path.Child("boundObjectRef")
		var resource string
		switch b.Kind {
		case "Pod":
			resource = "pods"
		case "Secret":
			resource = "secrets"
		case "Node":
			resource = "nodes"
		default:
			return apierrors.NewBadRequest(fmt.Sprintf("%s: cannot bind a token to a %q (Pod, Secret or Node)", bound.Child("kind"), b.Kind))
		}
		objNamespace := namespace
		if b.Kind == "Node" {
			objNamespace = ""
		}
		obj, err := t.get(ctx, objNamespace, resource, b.Name)
		if err != nil {
			return err
		}
		if b.UID != "" && b.UID != obj.GetUID() {
			return apierrors.NewConflict(schema.GroupResource{Resource: resource}, b.Name,
				fmt.Errorf("%s: the UID in the bound object reference (%s) does not match the object's (%s)", bound.Child("uid"), b.UID, obj.GetUID()))
		}
		r := &ref{Name: b.Name, UID: string(obj.GetUID())}
		switch b.Kind {
		case "Pod":
			c.Kubernetes.Pod = r
			pod, err := t.stores.store(schema.GroupResource{Resource: "pods"}).Get(genericapirequest.WithNamespace(ctx, namespace), b.Name, &metav1.GetOptions{})
			if err == nil {
				if nodeName := pod.(*corev1.Pod).Spec.NodeName; nodeName != "" {
					c.Kubernetes.Node = &ref{Name: nodeName}
					if node, err := t.get(ctx, "", "nodes", nodeName); err == nil {
						c.Kubernetes.Node.UID = string(node.GetUID())
					}
				}
			}
		case "Secret":
			c.Kubernetes.Secret = r
		case "Node":
			c.Kubernetes.Node = r
		}
		if b.APIVersion == "" {
			b.APIVersion = "v1"
		}
		b.UID = types.UID(r.UID)
	}
	token, err := t.signer.sign(c)
	if err != nil {
		return err
	}
	req.Spec.ExpirationSeconds = &expiration
	req.Status = authenticationv1.TokenRequestStatus{Token: token, ExpirationTimestamp: metav1.NewTime(time.Unix(c.Expiry, 0))}
	return nil
}

// tokenRequestREST serves serviceaccounts/<name>/token (the TokenRequest API).
type tokenRequestREST struct{ tokens *tokenSource }

var _ rest.NamedCreater = &tokenRequestREST{}

func (r *tokenRequestREST) New() runtime.Object { return &authenticationv1.TokenRequest{} }
func (r *tokenRequestREST) Destroy()            {}
func (r *tokenRequestREST) GroupVersionKind(schema.GroupVersion) schema.GroupVersionKind {
	return authenticationv1.SchemeGroupVersion.WithKind("TokenRequest")
}

func (r *tokenRequestREST) Create(ctx context.Context, name string, obj runtime.Object, createValidation rest.ValidateObjectFunc, options *metav1.CreateOptions) (runtime.Object, error) {
	req := obj.(*authenticationv1.TokenRequest)
	namespace, _ := genericapirequest.NamespaceFrom(ctx)
	if createValidation != nil {
		if err := createValidation(ctx, obj.DeepCopyObject()); err != nil {
			return nil, err
		}
	}
	out := req.DeepCopy()
	if err := r.tokens.issue(ctx, namespace, name, out); err != nil {
		return nil, err
	}
	return out, nil
}

// tokenReviewREST serves authentication.k8s.io/v1 tokenreviews: nothing is stored.
type tokenReviewREST struct{ tokens *tokenSource }

func (r *tokenReviewREST) New() runtime.Object     { return &authenticationv1.TokenReview{} }
func (r *tokenReviewREST) Destroy()                {}
func (r *tokenReviewREST) NamespaceScoped() bool   { return false }
func (r *tokenReviewREST) GetSingularName() string { return "tokenreview" }

func (r *tokenReviewREST) Create(ctx context.Context, obj runtime.Object, createValidation rest.ValidateObjectFunc, options *metav1.CreateOptions) (runtime.Object, error) {
	review := obj.(*authenticationv1.TokenReview)
	if review.Spec.Token == "" {
		return nil, apierrors.NewBadRequest("spec.token: Required value: a TokenReview needs a token")
	}
	if createValidation != nil {
		if err := createValidation(ctx, obj.DeepCopyObject()); err != nil {
			return nil, err
		}
	}
	audiences := review.Spec.Audiences
	if len(audiences) == 0 {
		audiences = r.tokens.audiences
	}
	out := review.DeepCopy()
	resp, ok, err := r.tokens.AuthenticateToken(authenticator.WithAudiences(ctx, audiences), review.Spec.Token)
	if err != nil {
		out.Status = authenticationv1.TokenReviewStatus{Error: err.Error()}
		return out, nil
	}
	if !ok {
		out.Status = authenticationv1.TokenReviewStatus{Error: "[invalid bearer token, not a service-account token issued by this server]"}
		return out, nil
	}
	u := resp.User
	status := authenticationv1.TokenReviewStatus{Authenticated: true, Audiences: resp.Audiences,
		User: authenticationv1.UserInfo{Username: u.GetName(), UID: u.GetUID(), Groups: append(u.GetGroups(), user.AllAuthenticated)}}
	if extra := u.GetExtra(); len(extra) > 0 {
		status.User.Extra = map[string]authenticationv1.ExtraValue{}
		for k, v := range extra {
			status.User.Extra[k] = v
		}
	}
	out.Status = status
	return out, nil
}

// newAuthenticator: bearer tokens from the static token file, then service-account tokens;
// anything else is system:anonymous (which the authorizer lets read health and version only).
func newAuthenticator(tokenFile string, tokens *tokenSource) (authenticator.Request, error) {
	static, err := tokenfile.NewCSV(tokenFile)
	if err != nil {
		return nil, fmt.Errorf("static token file %s: %w", tokenFile, err)
	}
	bearer := bearertoken.New(tokenunion.New(static, tokens))
	// FailOnError, as kube-apiserver: a bad token is a 401, not an anonymous request.
	return union.NewFailOnError(group.NewAuthenticatedGroupAdder(bearer), anonymous.NewAuthenticator(nil)), nil
}

// authenticatedAllowed: every authenticated user may do everything (no RBAC evaluation);
// anonymous requests reach only what kube-apiserver's system:public-info-viewer role allows.
type authenticatedAllowed struct{}

func (authenticatedAllowed) Authorize(ctx context.Context, a authorizer.Attributes) (authorizer.Decision, string, error) {
	u := a.GetUser()
	if u != nil {
		for _, g := range u.GetGroups() {
			if g == user.AllAuthenticated {
				return authorizer.DecisionAllow, "", nil
			}
		}
	}
	if !a.IsResourceRequest() && a.GetVerb() == "get" {
		switch a.GetPath() {
		case "/healthz", "/livez", "/readyz", "/version", "/version/":
			return authorizer.DecisionAllow, "", nil
		}
	}
	return authorizer.DecisionNoOpinion, "weft-kube-apiserver allows authenticated users only", nil
}
