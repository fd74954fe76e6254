package dynamostore

import (
	"errors"

	"github.com/aws/smithy-go"
)

// permanentCodes are the DynamoDB errors that the same request meets
// again however often it is retried: a ValidationException (an item
// that would pass 400 KB, a key longer than DynamoDB's 2,048 bytes, an
// expression DynamoDB cannot take) and an item collection at its size
// limit. Throttling, internal errors, a missing table or a denied
// permission are not: they are not the record's fault, and a retry (or a
// fix of the deployment) cures them.
var permanentCodes = map[string]bool{
	"ValidationException":                      true,
	"ItemCollectionSizeLimitExceededException": true,
}

// IsPermanent reports whether err is a DynamoDB refusal that no retry of
// the same request can cure.
func IsPermanent(err error) bool {
	var ae smithy.APIError
	return errors.As(err, &ae) && permanentCodes[ae.ErrorCode()]
}
