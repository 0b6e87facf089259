"""Bad input raises a clear error naming the argument and the expected shape."""

import numpy as np
import pytest

import enkit
from enkit.filters import SCHEMES
from conftest import LinearGaussian

p = LinearGaussian(12)
KEY = 0


@pytest.mark.parametrize("name", sorted(SCHEMES))
class TestSchemeInputs:
    def call(self, name, E=None, y=None, h=None, R=None):
        E = p.E if E is None else E
        y = p.y if y is None else y
        h = p.H if h is None else h
        R = p.R if R is None else R
        return SCHEMES[name](E, y, h, R, key=KEY)

    def test_H_with_wrong_shape(self, name):
        with pytest.raises(ValueError, match=r"h as a matrix must have shape \(m, n\) = \(3, 5\)"):
            self.call(name, h=p.H[:, :4])

    def test_R_with_wrong_dimension(self, name):
        with pytest.raises(ValueError, match=r"R must be .* \(3, 3\) matrix, got shape \(4, 4\)"):
            self.call(name, R=np.eye(4))

    def test_R_operator_with_wrong_dimension(self, name):
        with pytest.raises(ValueError, match=r"R has dimension 4, expected 3"):
            self.call(name, R=enkit.Scalar(1.0, 4))

    def test_E_not_2d(self, name):
        with pytest.raises(ValueError, match=r"E must have shape \(N, n\)"):
            self.call(name, E=p.E[0])

    def test_single_member(self, name):
        with pytest.raises(ValueError, match="at least N=2 members"):
            self.call(name, E=p.E[:1])

    def test_nonfinite_y(self, name):
        y = p.y.copy()
        y[1] = np.nan
        with pytest.raises(ValueError, match="y must be finite"):
            self.call(name, y=y)

    def test_nonfinite_E(self, name):
        E = p.E.copy()
        E[2, 1] = np.inf
        with pytest.raises(ValueError, match="E must be finite"):
            self.call(name, E=E)

    def test_y_not_1d(self, name):
        with pytest.raises(ValueError, match=r"y must have shape \(m,\)"):
            self.call(name, y=p.y[None])

    def test_R_not_positive_definite(self, name):
        R = np.diag([1.0, -1.0, 1.0])
        with pytest.raises(ValueError, match="positive definite"):
            self.call(name, R=R)

    def test_callable_h_wrong_output_length(self, name):
        with pytest.raises(ValueError, match=r"h must map one member of shape \(5,\) to shape \(m,\) = \(3,\).*\(2,\)"):
            self.call(name, h=lambda x: x[:2])

    def test_integer_ensemble(self, name):
        with pytest.raises(TypeError, match="E must have a floating dtype"):
            self.call(name, E=np.ones((4, 5), dtype=int))


def test_covariance_constructors_reject_bad_values():
    with pytest.raises(ValueError, match="variances must all be positive"):
        enkit.Diagonal(np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="variance must be positive"):
        enkit.Scalar(-1.0, 3)
    with pytest.raises(ValueError, match="symmetric"):
        enkit.Dense(np.array([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"covariance must have shape \(m, m\)"):
        enkit.Dense(np.ones((2, 3)))
    with pytest.raises(ValueError, match="covariance must be finite"):
        enkit.Dense(np.array([[np.nan, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        enkit.Scalar(1.0, 0)
